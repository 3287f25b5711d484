"""Give the heap's freed memory back to the operating system.

glibc's ``malloc`` serves tensors below its mmap threshold (which rises to 32 MiB as large
blocks are freed) from the heap, and keeps what they free: a configuration switch that
re-quantizes a model whose cache cannot hold two configurations frees and reallocates most of
its weights, and the process's resident memory grows by up to a model's worth of free but
unreturned heap (2.2 GiB for the Qwen2.5-1.5B shape, ``benchmarks/memory.py``).
``malloc_trim(0)`` returns every free page, including those between live blocks. It is called
after work that frees many large blocks (a switch that quantized, a change of dtype), not per
step. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Return the heap's free pages to the OS; True if the C library could (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
