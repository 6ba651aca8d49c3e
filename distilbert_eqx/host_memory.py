"""Keep the memory XLA:CPU frees inside the process, so that the next step does not page-fault it back in.

XLA:CPU allocates each execution's temporary buffers (activations and gradients: about 1.2 GiB for the mini
distillation step at 32 x 128) with ``malloc`` and frees them when the execution ends. glibc serves blocks
that large with ``mmap`` and hands them back to the kernel on ``free``, and trims the top of its heaps; so
every step touches about 1.2 GiB of fresh pages again, and the kernel answers each first touch of a 4 KiB page
with a page fault and a zeroed page: 320k faults and about 1 s of system CPU per step on the 2-core AMD
machine of the README's Performance section, where the step takes 3-4 s.

``retain_freed_memory`` tells glibc to serve every block from its heaps (no ``mmap``), never to trim them,
and to keep a single arena. Freed blocks stay mapped and are reused by the next step: no faults after the
first. The single arena matters: a thread that allocates from an arena of its own (glibc gives busy threads
one, up to the arena limit) gets its memory from 64 MiB heaps, and glibc 2.36 serves a larger block there
with ``mmap`` whatever the mmap setting says, and unmaps it on ``free``. XLA:CPU's temporary buffer is larger
than that for every step shape here (83 MiB at 32 x 8), so with one arena per CPU a step faulted or not
depending on which arena the allocating thread had drawn. The main arena grows with ``brk`` and obeys the
settings. The cost: the process's resident memory never drops below its high-water mark, which is what a
training process wants. Only glibc has these knobs; elsewhere (macOS, musl) the call does nothing.
"""

import ctypes
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


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory mapped in this process (see the module docstring); process-wide.

    Call it before the first JAX computation, which starts XLA's threads: a thread that already has an arena
    of its own keeps it (the other two settings apply at once). Returns whether glibc accepted all three
    settings; ``False`` (and nothing changed) where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_ARENA_MAX, 1))
    accepted = [libc.mallopt(parameter, value) == 1 for parameter, value in settings]
    return all(accepted)
