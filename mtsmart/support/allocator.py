"""Keep the memory a training step frees inside the process (glibc on Linux, CPU training).

Why: a SMART step on the CPU frees about a gigabyte of activations at its end (the clean and the
perturbed graphs). glibc's malloc gives the top of its heap back to the kernel once more than
M_TRIM_THRESHOLD bytes are free there, and returns every chunk above M_MMAP_THRESHOLD with
munmap, so the next step takes all of it back page by page: 0.8–3.4 × 10^5 minor page faults
per SMART step on MiniLM at batch 16 × 128, every page zeroed by the kernel — about 15% of the
step's CPU time (docs/performance.md). The loop allocates the same shapes every step, so keeping
the freed memory costs no more resident memory than the peak it already reaches.

`keep_freed_memory()` raises both thresholds and turns mmapped chunks off with mallopt(3), the
in-process form of the MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_ / MALLOC_MMAP_MAX_ /
MALLOC_TOP_PAD_ environment variables. Without mmapped chunks, tensors above 32 MiB (the
embedding table's gradient, the gradient penalty's double-backward buffers) are reused too. It
changes nothing on a GPU's memory (the CUDA caching allocator already keeps its blocks) and is a
no-op where glibc is absent (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

INT_MAX = 2**31 - 1  # mallopt takes a C int
TRIM_THRESHOLD = INT_MAX  # free memory at the heap top kept before any is returned
TOP_PAD = 1 << 30  # and 1 GiB kept even then
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit: chunks up to 32 MiB come from the heap
MMAP_MAX = 0  # and larger ones too: no chunk is mmapped, so none is unmapped at free


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse; True if it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_MMAP_MAX, MMAP_MAX), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD),
    )
    applied = all(mallopt(param, value) == 1 for param, value in settings)  # mallopt returns 1 on success
    if not applied:
        log.warning("mallopt refused a setting: freed memory may be returned to the kernel between steps")
    return applied
