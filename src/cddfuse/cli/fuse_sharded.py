"""``cddfuse fuse DIR DIR -o DIR`` split over processes: ``--shard K/N``, and ``torchrun`` (one share per rank).

The command line side of :mod:`cddfuse.fusion.shard`: the ``--shard`` option, this process's share and
device, what each process prints (under torchrun only rank 0 shows a progress bar and the combined
summary; the other ranks print their errors, marked with their rank), and the exit code (the same on
every rank: 1 when a pair failed anywhere).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from ..fusion.folder import FolderReport
from ..fusion.shard import Shard, TorchrunGroup, combine_reports, parse_shard, shard_selector

__all__ = ["add_shard_arguments", "ShardedRun", "check_not_sharded"]


def add_shard_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="folder mode: fuse only share K (0..N-1) of N of the pairs (a deterministic split of "
                        "the sorted pair list balanced by image size), e.g. from a Slurm job array or a "
                        "Kubernetes indexed job; the N shares together cover every pair once. Under torchrun "
                        "each rank takes its share automatically (no --shard needed)")


@dataclass
class ShardedRun:
    """One process's part of a folder run."""

    group: TorchrunGroup
    shard: Shard | None  # this process's share, or None: every pair
    outer: Shard | None  # the --shard option as given

    @classmethod
    def start(cls, args: argparse.Namespace) -> ShardedRun:
        """This process's share (from ``--shard`` and torchrun's environment); sets ``args.device`` to this
        rank's GPU under torchrun (``--device auto``/``cuda`` on a machine with GPUs); joins the process group."""
        outer = parse_shard(args.shard) if getattr(args, "shard", None) else None
        group = TorchrunGroup.from_environment()
        group.join()
        args.device = group.device(args.device)
        shard = group.shard(outer) if group.enabled else outer
        return cls(group, shard, outer)

    @property
    def select(self) -> Callable[..., list[str]] | None:
        """The ``select`` hook for :func:`~cddfuse.fusion.folder.fuse_folders` (None: every pair)."""
        return None if self.shard is None else shard_selector(self.shard)

    def progress(self, wanted: bool) -> bool:
        return wanted and self.group.rank == 0

    def log(self, write: Callable[[str], None]) -> Callable[[str], None]:
        """Under torchrun: lines marked with the rank; the unmatched-names warning (the same for every
        rank) only from rank 0."""
        if not self.group.enabled:
            return write
        rank = self.group.rank

        def log(line: str) -> None:
            if rank == 0 or not line.startswith("warning: "):
                write(f"[rank {rank}] {line}")
        return log

    def finish(self, report: FolderReport) -> int:
        """Print the summary (under torchrun: rank 0 prints every rank's work combined) and return the exit code."""
        try:
            reports = self.group.gather(report)
        finally:
            self.group.leave()
        combined = combine_reports(reports)
        if self.group.rank == 0:
            if self.group.enabled:
                where = f"{self.group.world_size} processes" + (f", shard {self.outer}" if self.outer else "")
            else:
                where = f"shard {self.shard}" if self.shard else ""
            print((f"{where}: " if where else "") + combined.summary(), file=sys.stderr)
            if combined.failed:
                print(f"failed pairs: {', '.join(combined.failed)}", file=sys.stderr)
        return 0 if combined.ok else 1


def check_not_sharded(args: argparse.Namespace, what: str) -> None:
    """``--shard`` and torchrun split folders of pairs; refuse them for ``what`` (a single pair, a video)."""
    from ..errors import UsageError

    if getattr(args, "shard", None):
        raise UsageError(f"--shard splits folders of pairs; {what} is not split (give two folders, or drop --shard)")
    if TorchrunGroup.from_environment().enabled:
        raise UsageError(f"under torchrun, fuse splits folders of pairs over the ranks; {what} would be fused by "
                         "every rank -- run it without torchrun")
