"""Folder fusion split over processes: ``--shard K/N`` and ``torchrun`` with gloo ranks on CPU."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cddfuse.cli.main import main
from cddfuse.errors import UsageError
from cddfuse.fusion import Fuser, fuse_folders
from cddfuse.fusion.shard import Shard, combine_reports, parse_shard, shard_selector, split_balanced

ROOT = Path(__file__).resolve().parents[1]
#: (stem, TNO pair, crop height, crop width): one large pair and five small ones, so that a split balanced
#: by pixels differs from a split by count.
CROPS = [("a", "01", 120, 160), ("b", "02", 40, 48), ("c", "03", 48, 40), ("d", "04", 44, 52),
         ("e", "05", 36, 60), ("f", "06", 52, 44)]


@pytest.fixture
def one_thread():
    """This process fuses with one thread (torchrun's ranks get one each, OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_threads():
    """This process fuses with two threads, its shares or ranks with one: the files must still be equal."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def frames(test_data, tmp_path) -> tuple[Path, Path]:
    """Six real TNO pairs, cropped to the sizes of CROPS, in tmp_path/ir and tmp_path/vi."""
    for stem, pair, h, w in CROPS:
        for side in ("ir", "vi"):
            img = cv2.imread(str(test_data / "TNO" / side / f"{pair}.png"), cv2.IMREAD_GRAYSCALE)
            (tmp_path / side).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / side / f"{stem}.png"), img[60:60 + h, 80:80 + w])
    return tmp_path / "ir", tmp_path / "vi"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_split_is_balanced_by_cost_with_a_known_answer():
    assert split_balanced([("a", 100), ("b", 60), ("c", 50), ("d", 40), ("e", 10)], 2) == [["a", "d"], ["b", "c", "e"]]
    assert split_balanced([("x", 5)], 3) == [["x"], [], []]
    assert split_balanced([("p", 1), ("q", 1), ("r", 1)], 3) == [["p"], ["q"], ["r"]]  # ties: by name, lowest share


@settings(max_examples=60, deadline=None)
@given(costs=st.lists(st.integers(1, 10_000), min_size=0, max_size=40), count=st.integers(1, 7))
def test_split_covers_everything_once_and_bounds_the_imbalance(costs, count):
    items = [(f"{i:03d}", c) for i, c in enumerate(costs)]
    shares = split_balanced(items, count)
    assert len(shares) == count
    flat = [name for share in shares for name in share]
    assert sorted(flat) == [name for name, _ in items]  # disjoint, and together every item
    assert all(share == sorted(share) for share in shares)  # each in the original (sorted) order
    cost = dict(items)
    loads = [sum(cost[n] for n in share) for share in shares]
    assert max(loads) - min(loads) <= max(costs, default=0)


def test_parse_shard_accepts_k_of_n_only():
    assert parse_shard("0/1") == Shard(0, 1) and parse_shard("3/4") == Shard(3, 4)
    for bad in ("1", "2/2", "-1/2", "a/b", "1/0", "1/2/3", ""):
        with pytest.raises(UsageError, match="expected K/N with 0 <= K < N"):
            parse_shard(bad)


def test_select_hook_splits_by_pixels(frames, tmp_path):
    ir, vi = frames
    nothing = fuse_folders(lambda: pytest.fail("no model is built for an empty share"), ir, vi, tmp_path / "none",
                           select=lambda pairs: [])
    assert nothing.done == nothing.skipped == [] and not nothing.failed and not list((tmp_path / "none").iterdir())
    half = fuse_folders(Fuser(method="max"), ir, vi, tmp_path / "half", select=lambda pairs: ["b", "e"])
    assert half.done == ["b", "e"] and sorted(p.name for p in (tmp_path / "half").iterdir()) == ["b.png", "e.png"]
    from cddfuse.io.pairs import match_pairs

    pairs = match_pairs(ir, vi).pairs
    assert shard_selector(Shard(0, 2))(pairs) == ["a"]  # 160x120 = 19200 px, more than the other five together
    assert shard_selector(Shard(1, 2))(pairs) == ["b", "c", "d", "e", "f"]


@pytest.mark.slow
def test_shards_together_give_the_whole_set_byte_identical(frames, tiny_weights, tmp_path, capsys, one_thread):
    ir, vi = frames
    common = ["--weights", str(tiny_weights), "-q"]
    assert main(["fuse", str(ir), str(vi), "-o", str(tmp_path / "whole"), *common]) == 0
    capsys.readouterr()
    for k in (0, 1):
        assert main(["fuse", str(ir), str(vi), "-o", str(tmp_path / "sharded"), "--shard", f"{k}/2", *common]) == 0
        summary = capsys.readouterr().err.strip().splitlines()
        fused = 1 if k == 0 else 5
        assert summary == [f"shard {k}/2: {fused} fused, 0 already done (skipped), 0 failed, 0 unmatched -> "
                           f"{tmp_path / 'sharded'}"]
    assert _files(tmp_path / "sharded") == _files(tmp_path / "whole") and len(_files(tmp_path / "whole")) == 6
    # a rerun of a share redoes nothing
    assert main(["fuse", str(ir), str(vi), "-o", str(tmp_path / "sharded"), "--shard", "1/2", *common]) == 0
    assert "0 fused, 5 already done (skipped)" in capsys.readouterr().err


def test_shard_errors_are_one_line(frames, tmp_path, capsys):
    ir, vi = frames
    assert main(["fuse", str(ir), str(vi), "-o", str(tmp_path / "o"), "--method", "max", "--shard", "2/2"]) == 2
    assert capsys.readouterr().err.strip() == ("cddfuse fuse: error: --shard 2/2: expected K/N with 0 <= K < N, "
                                               "e.g. 0/4 for the first of four shares")
    assert main(["fuse", str(ir / "a.png"), str(vi / "a.png"), "-o", str(tmp_path / "x.png"), "--method", "max",
                 "--shard", "0/2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shard splits folders of pairs" in err[0]
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "o").exists()


def test_combined_report_names_every_failure():
    from cddfuse.fusion.folder import FolderReport

    r0 = FolderReport(Path("out"), done=["c"], skipped=["a"], failed={"z": "bad"}, only_a=["lonely"])
    r1 = FolderReport(Path("out"), done=["b"], failed={"y": "worse"}, only_a=["lonely"], stopped="disk full")
    combined = combine_reports([r0, r1])
    assert combined.done == ["b", "c"] and combined.skipped == ["a"] and list(combined.failed) == ["y", "z"]
    assert combined.summary() == ("2 fused, 1 already done (skipped), 2 failed, 1 unmatched -> out; "
                                  "stopped early: rank 1: disk full")


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_killed_and_restarted(frames, tiny_weights, tmp_path, capsys, two_threads):
    """2 gloo ranks under torchrun (one thread each): rank 1 is SIGKILLed after its first output; torchrun
    restarts the job, which finishes without redoing a finished pair, and the files equal those of one
    2-thread process byte for byte. One pair cannot be read: rank 0's combined summary names it and the
    job exits 1."""
    ir, vi = frames
    common = ["--weights", str(tiny_weights), "-q"]
    assert main(["fuse", str(ir), str(vi), "-o", str(tmp_path / "one"), *common]) == 0
    capsys.readouterr()
    (ir / "g.png").write_text("not an image")  # a pair that fails, on whichever rank gets it
    (vi / "g.png").write_bytes((vi / "b.png").read_bytes())
    log = tmp_path / "writes.log"
    env = dict(os.environ, CDDFUSE_TEST_WRITE_LOG=str(log), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", "--monitor-interval", "0.2", str(ROOT / "tests" / "torchrun_kill_once.py"),
           "fuse", str(ir), str(vi), "-o", str(tmp_path / "two"), *common]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # its own process group: nothing outlives a timeout
    try:
        _, stderr = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
        pids = Path(f"{log}.pids")
        if job.returncode != 0 and pids.exists():  # ranks run in sessions of their own: end any that hung
            for pid in pids.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    assert job.returncode == 1, stderr[-3000:]  # a pair failed (on the last attempt too): exit code 1
    writes = [line.split() for line in log.read_text().splitlines()]
    first = [name for attempt, _, name in writes if attempt == "0"]
    second = [name for attempt, _, name in writes if attempt == "1"]
    assert [(a, r) for a, r, _ in writes if a == "0" and r == "1"] == [("0", "1")]  # killed after one output
    assert second and len(first) + len(second) == 6 and not set(first) & set(second)  # nothing redone
    lines = stderr.splitlines()
    summaries = [line for line in lines if "already done" in line]
    assert summaries == [f"2 processes: {len(second)} fused, {len(first)} already done (skipped), 1 failed, "
                         f"0 unmatched -> {tmp_path / 'two'}"]  # once, from rank 0, for both ranks
    assert lines[lines.index(summaries[0]) + 1] == "failed pairs: g"
    assert sum(bool(re.match(r"\[rank 1\] error: g: .*not a readable image", line)) for line in lines) == 1
    assert _files(tmp_path / "two") == _files(tmp_path / "one")  # no temporary file left either
    assert {name for _, rank, name in writes if rank == "0"} == {"a.png"}  # the pixel-balanced split



def test_torchrun_environment_gives_each_rank_its_share(monkeypatch):
    from cddfuse.errors import CDDFuseError
    from cddfuse.fusion.shard import TorchrunGroup

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = TorchrunGroup.from_environment()
    assert not alone.enabled and alone.shard() == Shard(0, 1) and alone.device("auto") == "auto"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    group = TorchrunGroup.from_environment()
    assert group.enabled and group.shard() == Shard(3, 4)
    assert group.shard(Shard(2, 5)) == Shard(2 * 4 + 3, 20)  # --shard 2/5 under torchrun: split again
    assert group.device("cpu") == "cpu"
    assert group.device("auto") == ("cuda:1" if torch.cuda.is_available() and torch.cuda.device_count() > 1
                                    else "cuda:0" if torch.cuda.is_available() else "auto")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(CDDFuseError, match="RANK=4 and WORLD_SIZE=4"):
        TorchrunGroup.from_environment()
