"""Keep freed memory for reuse in a training process (glibc's malloc).

glibc hands large freed blocks back to the system at once: a block above the mmap threshold
is unmapped when freed, and the top of the heap is trimmed whenever more than the trim
threshold is free there. The threshold starts at 128 KiB and rises as large blocks are freed,
but a training step frees and allocates again the same activation-sized tensors every step, and
the heap keeps shrinking and growing under them: each new tensor then faults its pages in
again, and the kernel zeroes them. `keep_freed_memory` sets both thresholds, as the
`MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` environment variables would at start-up
(the same advice as PyTorch's CPU tuning guides, which reach it with jemalloc or tcmalloc), so
freed blocks below 32 MiB are reused (docs/throughput.md, "Keeping freed memory").

Process-wide and for the rest of the process: glibc has no way back to its adaptive thresholds.
The peak memory is unchanged (the same tensors are alive at the peak); what changes is that up to
`TRIM_THRESHOLD` of free heap stays with the process between steps.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# The largest mmap threshold glibc accepts on 64-bit (half of its 64 MiB heap size).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
# mallopt's parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
ENV_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process, once; True when they are set.

    Does nothing (False) off Linux, under a C library without `mallopt` or that refuses it
    (musl's is a stub), and when the user set either threshold in the environment already."""
    if not sys.platform.startswith("linux") or any(v in os.environ for v in ENV_VARS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
