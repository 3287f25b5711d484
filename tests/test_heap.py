"""Freed heap memory goes back to the OS (glibc's malloc_trim; elsewhere a no-op)."""

import re
from pathlib import Path

import pytest
import torch

from coalora.heap import release_freed_memory

STATUS = Path("/proc/self/status")


def rss_bytes() -> int:
    return int(re.search(r"^VmRSS:\s+(\d+) kB", STATUS.read_text(), re.M).group(1)) * 1024


@pytest.mark.skipif(not STATUS.exists(), reason="needs /proc (Linux)")
def test_freed_blocks_between_live_ones_are_returned():
    if not release_freed_memory():
        pytest.skip("the C library has no malloc_trim (not glibc)")
    big = torch.ones(6 * 2**20)  # freeing a 24 MiB block raises glibc's mmap threshold,
    del big  # so the 2 MiB blocks below come from the heap, as a quantizer's temporaries do
    blocks, live = [], []
    for _ in range(64):
        blocks.append(torch.ones(2**19))  # 2 MiB
        live.append(torch.ones(2**16))  # 256 KiB between them: the heap cannot shrink at its top
    with_blocks = rss_bytes()
    del blocks
    release_freed_memory()
    assert rss_bytes() <= with_blocks - 96 * 2**20  # of the 128 MiB freed
    assert len(live) == 64
