"""torchrun entry point for tests/test_shard.py (not a test module): runs ``cddfuse`` with its arguments,
logs every output file written (``attempt rank name`` lines appended to ``$CDDFUSE_TEST_WRITE_LOG``),
and on the job's first attempt kills rank 1 with SIGKILL right after its first output is written --
a crash with no chance to clean up, after which torchrun (``--max-restarts``) restarts the job."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from cddfuse.cli.main import main
from cddfuse.fusion import folder

ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
RANK = int(os.environ.get("RANK", "0"))
_written = 0


def _write_and_maybe_die(path, *args, **kwargs):
    global _written
    result = _real_write(path, *args, **kwargs)
    with open(os.environ["CDDFUSE_TEST_WRITE_LOG"], "a") as log:
        log.write(f"{ATTEMPT} {RANK} {Path(path).name}\n")
    _written += 1
    if ATTEMPT == 0 and RANK == 1 and _written == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


_real_write = folder.write_image

if __name__ == "__main__":  # only as torchrun's script (pytest's doctest collection imports this file too)
    folder.write_image = _write_and_maybe_die
    with open(os.environ["CDDFUSE_TEST_WRITE_LOG"] + ".pids", "a") as pids:  # for the test to clean up a hang
        pids.write(f"{os.getpid()}\n")
    sys.exit(main(sys.argv[1:]))
