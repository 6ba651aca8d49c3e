"""retain_freed_memory: afterwards, a large block freed and allocated again is not page-faulted back in."""

import json
import subprocess
import sys

import pytest

from distilbert_eqx import host_memory
from distilbert_eqx.host_memory import _glibc
from helpers import REPO

# Four rounds of malloc, touch every byte, free, each counting this process's minor page faults, in the main
# thread or in a thread started after the settings (as XLA's threads are). Run in a fresh interpreter: the
# settings are process-wide, and arenas that already exist keep their behaviour.
_ROUNDS = """
import ctypes, json, resource, sys, threading
from distilbert_eqx.host_memory import retain_freed_memory
if sys.argv[1] == "retain" and not retain_freed_memory():
    raise SystemExit("glibc refused a setting")
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = int(sys.argv[2])
faults = []

def rounds():
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

if sys.argv[3] == "thread":
    thread = threading.Thread(target=rounds)
    thread.start()
    thread.join()
else:
    rounds()
print(json.dumps(faults))
"""


def _faults_per_round(mode: str, size: int, where: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode, str(size), where],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# 96 MiB is over the 64 MiB a glibc heap of a thread's own arena can hold: glibc maps such a block with mmap
# even when mmap is switched off, and unmaps it on free, unless the thread allocates from the main arena.
@pytest.mark.slow
@pytest.mark.skipif(_glibc() is None, reason="the C library is not glibc")
@pytest.mark.parametrize(("size", "where"), [(64 << 20, "main"), (96 << 20, "main"), (96 << 20, "thread")])
def test_freed_block_is_reused_without_page_faults(size, where):
    pages = size // 4096
    default, retained = _faults_per_round("default", size, where), _faults_per_round("retain", size, where)
    # The premise: by default glibc unmaps the block on free, so every round faults it in again (at least
    # once per 2 MiB, should the kernel back it with huge pages).
    assert min(default[1:]) >= pages // 512, default
    # Retained: the first round faults the block in, later rounds reuse it.
    assert retained[0] >= pages // 512, retained
    assert max(retained[1:]) <= pages // 100, retained


@pytest.mark.parametrize(
    ("platform", "environment", "expected"),
    [
        ("cpu", "", True),
        ("gpu", "", False),
        ("tpu", "cpu", False),
        ("tt", "", False),
        (None, "cpu", True),
        (None, "cuda,cpu", False),
    ],
)
def test_applies_on_the_cpu_backend_only(monkeypatch, platform, environment, expected):
    monkeypatch.setenv("JAX_PLATFORMS", environment)
    assert host_memory.applies_to(platform) is expected


def test_default_backend_follows_the_installed_plugins(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(host_memory, "_accelerator_plugin_installed", lambda: True)
    assert host_memory.applies_to(None) is False
    monkeypatch.setattr(host_memory, "_accelerator_plugin_installed", lambda: False)
    assert host_memory.applies_to(None) is True
