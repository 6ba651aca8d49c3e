"""Keep the memory XLA:CPU frees inside the process, so that the next step does not page-fault it back in.

XLA:CPU allocates each execution's temporary buffers (activations and gradients, a large share of a step's
working set) with ``malloc`` and frees them when the execution ends. glibc serves blocks that large with
``mmap`` and hands them back to the kernel on ``free``, and trims the top of its heaps; so every step touches
all of that memory as fresh pages again, and the kernel answers each first touch of a page with a page fault
and a zeroed page: system CPU time on every step (measured in docs/performance.md).

``retain_freed_memory`` tells glibc to serve every block from its heaps (no ``mmap``), never to trim them,
and to keep a single arena. Freed blocks stay mapped and are reused by the next step: no faults after the
first. The single arena matters: a thread that allocates from an arena of its own (glibc gives busy threads
one, up to the arena limit) gets its memory from fixed-size heaps (64 MiB on 64-bit glibc), and glibc 2.36
serves a larger block there with ``mmap`` whatever the mmap setting says, and unmaps it on ``free``. XLA:CPU's
temporary buffer is larger than that at every step shape we train, so with one arena per CPU a step faulted or
not depending on which arena the allocating thread had drawn. The main arena grows with ``brk`` and obeys the
settings. The cost: the process's resident memory never drops below its high-water mark, which is what a
training process wants. Only glibc has these knobs; elsewhere (macOS, musl) the call does nothing. It is
applied on the CPU backend only (``applies_to``): that is where it was measured, and accelerators keep their
buffers in device memory.
"""

import ctypes
import importlib.util
import os
import pkgutil
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


def applies_to(platform: str | None) -> bool:
    """Whether a run on ``platform`` (``None``: JAX's default backend) computes on the CPU.

    Decided without starting a JAX backend, since ``retain_freed_memory`` must run before XLA's threads exist:
    ``None`` follows ``JAX_PLATFORMS``, else JAX picks an accelerator when its plugin is installed.
    """
    if platform is None:
        platform = os.environ.get("JAX_PLATFORMS", "").split(",")[0] or None
    if platform is not None:
        return platform == "cpu"
    return not _accelerator_plugin_installed()


def _accelerator_plugin_installed() -> bool:
    if any(importlib.util.find_spec(name) for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")):
        return True
    try:
        import jax_plugins  # the namespace PJRT plugins (ROCm, TT-XLA, ...) install into
    except ImportError:
        return False
    return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))
