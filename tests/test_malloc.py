"""cddfuse._malloc: the glibc settings really take effect (checked in a fresh process each)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cddfuse import _malloc

pytestmark = pytest.mark.skipif(not _malloc.can_trim(), reason="needs Linux with glibc (mallopt, malloc_trim, /proc)")

# Allocate 64 MiB in 64 KiB blocks (below the mmap threshold, so from the heap), touch them, free
# them all (they coalesce into the heap's free top) and print how much resident memory that gave back.
_SCRIPT = """
import ctypes, sys
from cddfuse import _malloc
ok = _malloc.set_malloc_options(mmap_threshold=32 << 20, trim_threshold={trim})
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(64 << 10) for _ in range(1024)]
for p in blocks:
    ctypes.memset(p, 1, 64 << 10)
before = _malloc.resident_memory()
for p in reversed(blocks):
    libc.free(p)
after = _malloc.resident_memory()
print(ok, (before - after) >> 20)
"""


def _released_mib(trim: int) -> int:
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(trim=trim)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "True"
    return int(out[1])


def test_a_large_trim_threshold_keeps_freed_memory():
    # 2**62 does not fit mallopt's int: it must be clamped (to 2 GiB), not wrapped to 0
    assert _released_mib(2**62) < 8


def test_a_zero_trim_threshold_gives_it_back():
    assert _released_mib(0) > 48


def test_trim_and_resident_memory():
    assert _malloc.resident_memory() > 10 * 2**20
    assert isinstance(_malloc.trim(), bool)
