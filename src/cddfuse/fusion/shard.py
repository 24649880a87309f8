"""Folder fusion split over processes: ``torchrun`` ranks, or ``--shard K/N`` jobs without a process group.

Every process lists the same two folders and computes the same split of the sorted pair list, so the
shares are disjoint and together cover every pair, with no coordinator: the split depends only on the
folders' contents (never on which outputs exist yet, nor on when a process starts), so a restarted job
(``torchrun --max-restarts``) or a rerun gives each process the same share again, and each skips the
outputs that exist (:func:`~cddfuse.fusion.folder.fuse_folders` writes atomically and resumes).

The split balances **pixels**, not pair counts: each pair costs the pixel count of its first source
(read from the file header, nothing decoded; the second is fused at that size), and the pairs are dealt
largest first to the share with the least work so far (ties: the lower share index). No share then gets
more than the others by more than one pair's cost.

Under ``torchrun`` the ranks join a gloo process group that carries only the end-of-run reports to
every rank (fusion itself needs no communication), so rank 0 can print one combined summary and every
rank exits with the same code. ``--shard K/N`` under ``torchrun`` splits share K of N again over the
ranks (share ``K * world + rank`` of ``N * world``), e.g. for a Slurm array of multi-GPU nodes.

Example:
    >>> split_balanced([("a", 100), ("b", 60), ("c", 50), ("d", 40), ("e", 10)], 2)
    [['a', 'd'], ['b', 'c', 'e']]
    >>> parse_shard("1/4")
    Shard(index=1, count=4)
    >>> parse_shard("4/4")
    Traceback (most recent call last):
    ...
    cddfuse.errors.UsageError: shard='4/4': expected K/N with 0 <= K < N, e.g. 0/4 for the first of four shares
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import CDDFuseError, UsageError, first_line
from ..io.image import DEFAULT_MAX_PIXELS, probe_image
from .folder import FolderReport

__all__ = ["Shard", "parse_shard", "split_balanced", "pair_cost", "shard_selector", "TorchrunGroup",
           "combine_reports", "PROCESS_GROUP_TIMEOUT"]

#: How long a rank that finished its share waits for the others at the end (the default of
#: ``torch.distributed``, 30 minutes, is shorter than a large share; a rank that dies makes torchrun stop
#: the others, so nobody waits for a dead rank).
PROCESS_GROUP_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Shard:
    """Share ``index`` (from 0) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


#: More shares than this is a typing error, not a plan (and the split would take its time dealing them).
MAX_SHARDS = 100_000


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> :class:`Shard`; anything else (or K outside 0..N-1) is a :class:`UsageError`."""
    parts = str(text).split("/")
    try:
        index, count = (int(p) for p in parts) if len(parts) == 2 else (-1, 0)
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise UsageError.invalid("shard", text, "expected K/N with 0 <= K < N, e.g. 0/4 for the first of four shares")
    if count > MAX_SHARDS:
        raise UsageError.invalid("shard", text, f"N may be at most {MAX_SHARDS:,} shares")
    return Shard(index, count)


def split_balanced(costs: Sequence[tuple[str, int]], count: int) -> list[list[str]]:
    """Deal ``(name, cost)`` items into ``count`` shares of nearly equal total cost.

    Largest cost first (ties by name), each to the share with the smallest total so far (ties: lowest
    index); each share lists its names in their original order. Deterministic: the same items always
    give the same shares, and the shares are disjoint and cover every item.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    loads = [0] * count
    owner: dict[str, int] = {}
    for name, cost in sorted(costs, key=lambda item: (-item[1], item[0])):
        share = min(range(count), key=lambda i: (loads[i], i))
        owner[name] = share
        loads[share] += cost
    shares: list[list[str]] = [[] for _ in range(count)]
    for name, _ in costs:
        shares[owner[name]].append(name)
    return shares


def pair_cost(path_a: Path, path_b: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> int:
    """The work of one pair: the pixels of its first source (header only), else of the second; 1 when
    neither header can be read (the pair will fail, which costs next to nothing)."""
    for path in (path_a, path_b):
        try:
            header = probe_image(path, max_pixels)
        except (CDDFuseError, OSError):
            continue
        if header is not None:
            return header.pixels
    return 1


def shard_selector(shard: Shard, max_pixels: int | None = DEFAULT_MAX_PIXELS
                   ) -> Callable[[Sequence[tuple[str, Path, Path]]], list[str]]:
    """The ``select`` hook of :func:`~cddfuse.fusion.folder.fuse_folders` that keeps share ``shard`` of the pairs."""
    def select(pairs: Sequence[tuple[str, Path, Path]]) -> list[str]:
        costs = [(stem, pair_cost(a, b, max_pixels)) for stem, a, b in pairs]
        return split_balanced(costs, shard.count)[shard.index]
    return select


def combine_reports(reports: Sequence[FolderReport]) -> FolderReport:
    """One report for the whole folder from the reports of its shares (names sorted; unmatched names
    from the first report -- every share sees the same listing)."""
    first = reports[0]
    combined = FolderReport(first.out_dir, only_a=list(first.only_a), only_b=list(first.only_b))
    stopped = []
    for rank, report in enumerate(reports):
        combined.done.extend(report.done)
        combined.skipped.extend(report.skipped)
        combined.failed.update(report.failed)
        if report.stopped:
            stopped.append(f"rank {rank}: {report.stopped}" if len(reports) > 1 else report.stopped)
    combined.done.sort()
    combined.skipped.sort()
    combined.failed = dict(sorted(combined.failed.items()))
    combined.stopped = "; ".join(stopped) or None
    return combined


@dataclass
class TorchrunGroup:
    """This process's place in a ``torchrun`` job (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), and the
    gloo process group that collects the reports. ``world_size == 1``: not under torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _joined: bool = field(default=False, repr=False)

    @classmethod
    def from_environment(cls) -> TorchrunGroup:
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise CDDFuseError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (they are set by torchrun)"
                               ) from None
        if world < 1 or not 0 <= rank < world:
            raise CDDFuseError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process of a job")
        return cls(rank, world, local)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, outer: Shard | None = None) -> Shard:
        """This rank's share: ``rank/world``, or of ``outer`` split again over the ranks."""
        if outer is None:
            return Shard(self.rank, self.world_size)
        return Shard(outer.index * self.world_size + self.rank, outer.count * self.world_size)

    def device(self, requested: str) -> str:
        """``auto`` or ``cuda`` -> ``cuda:<LOCAL_RANK>`` on a machine with GPUs under torchrun; else unchanged."""
        if self.enabled and requested in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested

    def join(self) -> None:
        """Join the gloo process group (torchrun's ``MASTER_ADDR``/``MASTER_PORT``), before any work, so
        that a broken rendezvous fails at once rather than after the fusion."""
        if not self.enabled or self._joined:
            return
        import torch.distributed as dist

        if not dist.is_available():
            raise CDDFuseError("this PyTorch build has no torch.distributed; use --shard K/N instead of torchrun")
        if not dist.is_initialized():
            from torch.distributed.rendezvous import rendezvous

            # torchrun's agent keeps one key-value store for the whole job, restarts included: without a
            # per-attempt namespace a restarted rank can read the gloo address of a rank of the attempt
            # that died, and wait on it ("connection refused").
            store, rank, world = next(rendezvous("env://", timeout=PROCESS_GROUP_TIMEOUT))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            try:
                dist.init_process_group("gloo", store=dist.PrefixStore(  # type: ignore[attr-defined]
                    f"cddfuse/attempt_{attempt}", store),
                                        rank=rank, world_size=world, timeout=PROCESS_GROUP_TIMEOUT)
            except RuntimeError as e:
                raise CDDFuseError(f"cannot join the torchrun job's process group: {first_line(e)}") from None
        self._joined = True

    def gather(self, report: FolderReport) -> list[FolderReport]:
        """Every rank's report, in rank order, on every rank (just ``[report]`` without torchrun)."""
        if not self.enabled:
            return [report]
        import torch.distributed as dist

        self.join()
        reports: list[object] = [None] * self.world_size
        try:
            dist.all_gather_object(reports, report)
        except RuntimeError as e:  # a rank died (torchrun then stops or restarts the job)
            raise CDDFuseError(f"another rank of the job stopped before the end ({first_line(e)}); the outputs "
                               "written are kept: rerun the job, or let torchrun --max-restarts do it") from None
        return [r for r in reports if isinstance(r, FolderReport)]

    def leave(self) -> None:
        if self._joined:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._joined = False
