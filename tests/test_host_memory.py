"""retain_freed_memory: afterwards, a large block freed and allocated again is not page-faulted back in."""

import json
import subprocess
import sys

import pytest

from distilbert_eqx.host_memory import _glibc, retain_freed_memory
from paths import REPO

# Four rounds of malloc, touch every byte, free, each counting this process's minor page faults. Run in a
# fresh interpreter: the settings are process-wide, and arenas that already exist keep their behaviour.
_ROUNDS = """
import ctypes, json, resource, sys
from distilbert_eqx.host_memory import retain_freed_memory
if sys.argv[1] == "retain" and not retain_freed_memory():
    raise SystemExit("glibc refused a setting")
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = int(sys.argv[2])
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""

_SIZE = 64 << 20
_PAGES = _SIZE // 4096


def _faults_per_round(mode: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode, str(_SIZE)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc() is None, reason="the C library is not glibc")
def test_freed_block_is_reused_without_page_faults():
    default, retained = _faults_per_round("default"), _faults_per_round("retain")
    # The premise: by default glibc unmaps the 64 MiB block on free, so every round faults it in again (at
    # least once per 2 MiB, should the kernel back it with huge pages).
    assert min(default[1:]) >= _PAGES // 512, default
    # Retained: the first round faults the block in, later rounds reuse it.
    assert retained[0] >= _PAGES // 512, retained
    assert max(retained[1:]) <= _PAGES // 100, retained


def test_arenas_must_be_positive():
    with pytest.raises(ValueError, match="arenas must be >= 1, got 0"):
        retain_freed_memory(arenas=0)
