"""The output_dir lock: a second run fails naming the holder, a killed run's lock is taken over, release is
reliable. Rivals run in subprocesses, since a lock that only excludes its own process would prove nothing."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from distilbert_eqx.errors import UserError
from distilbert_eqx.run_lock import LOCK_FILE, OutputDirLock, OutputDirLocked, StaleLockWarning, check_free

_RIVAL = """
import sys
from distilbert_eqx.run_lock import OutputDirLock, OutputDirLocked
try:
    OutputDirLock(sys.argv[1]).acquire()
except OutputDirLocked as error:
    print(error)
    sys.exit(3)
print("acquired")
"""

_SLEEPER = """
import sys, time
from distilbert_eqx.run_lock import OutputDirLock
OutputDirLock(sys.argv[1]).acquire()
print("acquired", flush=True)
time.sleep(600)
"""


def _rival(output_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _RIVAL, str(output_dir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_second_run_fails_naming_holder_until_release(tmp_path):
    output_dir = tmp_path / "run" / "nested"
    lock = OutputDirLock(output_dir)
    lock.acquire()
    assert json.loads((output_dir / LOCK_FILE).read_text())["pid"] == os.getpid()

    held = _rival(output_dir)
    assert held.returncode == 3, held.stderr
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in held.stdout
    assert str(output_dir) in held.stdout and "choose another output_dir" in held.stdout

    lock.release()
    assert (output_dir / LOCK_FILE).read_text() == ""
    free = _rival(output_dir)
    assert free.returncode == 0, free.stdout + free.stderr
    assert free.stdout.strip() == "acquired"


def test_locked_error_is_a_user_error(tmp_path):
    # flock excludes a second open file even in the same process.
    with OutputDirLock(tmp_path), pytest.raises(UserError, match=f"pid {os.getpid()}"):
        OutputDirLock(tmp_path).acquire()


def test_check_free_names_the_holder_and_creates_nothing(tmp_path):
    """The check before anything is written: a busy folder is busy (not a folder holding a run), a free one
    stays free (the probe's shared lock goes with it), and a missing one is not created."""
    check_free(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    run = tmp_path / "run"
    with OutputDirLock(run):
        busy = f"output_dir {run} is in use by another run \\(pid {os.getpid()} "
        with pytest.raises(OutputDirLocked, match=busy):
            check_free(run)
    check_free(run)
    with OutputDirLock(run):
        pass


@pytest.mark.slow
def test_killed_run_is_taken_over_with_warning(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", _SLEEPER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "acquired"
        with pytest.raises(OutputDirLocked, match=f"pid {child.pid} "):
            OutputDirLock(tmp_path).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == child.pid

    with pytest.warns(StaleLockWarning, match=f"pid {child.pid} "), OutputDirLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_record_from_other_host_is_taken_over(tmp_path):
    # flock, not the record, decides: a record naming a live pid elsewhere is stale once the lock is free.
    record = {"host": "elsewhere.example", "pid": 1, "started": "2000-01-01T00:00:00+00:00", "argv": ["x"]}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    with pytest.warns(StaleLockWarning, match="pid 1 on host elsewhere.example"):
        OutputDirLock(tmp_path).acquire()


def test_context_manager_releases_on_exception(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), OutputDirLock(tmp_path):
        raise RuntimeError("boom")
    # A held lock would raise here, and an uncleared record would warn (warnings are errors in tests).
    with OutputDirLock(tmp_path):
        pass


def test_reacquire_after_release(tmp_path):
    lock = OutputDirLock(tmp_path)
    for _ in range(2):
        lock.acquire()
        with pytest.raises(RuntimeError, match="already held"):
            lock.acquire()
        lock.release()
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""
