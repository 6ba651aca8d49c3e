"""Keep the memory XLA:CPU frees inside the process, so that the next step does not page-fault it back in.

XLA:CPU allocates each execution's temporary buffers (activations and gradients: about 1.2 GiB for the mini
distillation step at 32 x 128) with ``malloc`` and frees them when the execution ends. glibc serves blocks
that large with ``mmap`` and hands them back to the kernel on ``free``, trims the top of its heaps, and gives
each busy thread its own arena; so every step touches about 1.2 GiB of fresh pages again, and the kernel
answers each first touch of a 4 KiB page with a page fault and a zeroed page: 320k faults and about 1 s of
system CPU per step on the 2-core machine of the README's Performance section, where the step takes 3-4 s.

``retain_freed_memory`` tells glibc to serve every block from its heaps (no ``mmap``), never to trim them,
and to keep one arena per usable CPU. Freed blocks stay mapped and are reused by the next step: no faults
after the first. The cost: the process's resident memory never drops below its high-water mark, which is what
a training process wants. Only glibc has these knobs; elsewhere (macOS, musl) the call does nothing.
"""

import ctypes
import os
import sys

# mallopt(3) parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes a C int: the largest trim threshold it can express (2 GiB) is as good as "never".
_NEVER_TRIM = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this interpreter is linked against
    except OSError:
        return None
    # glibc's own marker; musl exports a mallopt that ignores every parameter.
    if not hasattr(libc, "gnu_get_libc_version"):
        return None
    return libc


def retain_freed_memory(arenas: int | None = None) -> bool:
    """Make glibc keep freed memory mapped in this process (see the module docstring); process-wide.

    Call it before the first JAX computation: arenas created earlier are not merged (the other two settings
    apply at once). ``arenas`` defaults to the number of CPUs this process may run on; a value below it makes
    threads share arenas (more lock contention, fewer mappings). Returns whether glibc accepted all three
    settings; ``False`` (and nothing changed) where the C library is not glibc.
    """
    if arenas is not None and arenas < 1:
        raise ValueError(f"arenas must be >= 1, got {arenas}")
    libc = _glibc()
    if libc is None:
        return False
    if arenas is None:
        arenas = len(os.sched_getaffinity(0))
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_ARENA_MAX, arenas))
    accepted = [libc.mallopt(parameter, value) == 1 for parameter, value in settings]
    return all(accepted)
