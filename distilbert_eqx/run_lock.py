"""A lock on a run's ``output_dir``, so that a second run on the same folder fails at once, naming the holder,
instead of interleaving its checkpoints with the first.

It is ``fcntl.flock`` on ``output_dir/.lock``, which the kernel drops however the holder dies, so a crashed run
never blocks the next. The file holds the holder's JSON record (host, pid, start, argv), written while locked and
cleared on release: a record on a free lock was left by a killed run. Only writers (process 0 of a multi-host
run) should take the lock; that choice is the caller's.
"""

import fcntl
import json
import os
import socket
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import UserError

LOCK_FILE = ".lock"


class OutputDirLocked(UserError):
    """Another live run holds the output folder; running beside it would mix the two runs' checkpoints."""


class StaleLockWarning(UserWarning):
    """The lock file named a run that no longer holds the lock (it was killed); its lock was taken over."""


def _read_record(fd: int) -> dict[str, Any] | None:
    # An empty or half-written file (a holder between locking and writing) names nobody.
    try:
        record = json.loads(os.pread(fd, os.fstat(fd).st_size, 0).decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "a run that has not written its record yet"
    text = f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, started {record.get('started', '?')}"
    argv = record.get("argv")
    return f"{text}, command: {' '.join(map(str, argv))}" if isinstance(argv, list) and argv else text


def _locked(output_dir: Path, holder: str) -> OutputDirLocked:
    return OutputDirLocked(
        f"output_dir {output_dir} is in use by another run ({holder}). Wait for that run to finish, or "
        "choose another output_dir."
    )


def check_free(output_dir: str | os.PathLike[str]) -> None:
    """Raise `OutputDirLocked`, naming the holder, when a live run holds ``output_dir``; create nothing.

    For the checks that run before anything is written: a busy folder should fail as busy, not as a folder
    holding a finished run. `OutputDirLock` still decides, later, under the lock."""
    path = Path(output_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _locked(Path(output_dir), _describe(_read_record(fd))) from None
    finally:
        os.close(fd)  # closing drops a shared lock taken here


class OutputDirLock:
    """An exclusive lock on ``output_dir``, held from ``acquire()`` (or ``with``) until ``release()``.

    **Arguments:**

    - `output_dir`: the run's output folder; created if missing.
    """

    def __init__(self, output_dir: str | os.PathLike[str]):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise `OutputDirLocked` naming the holder; never waits."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this OutputDirLock")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _describe(_read_record(fd))
            os.close(fd)
            if not isinstance(error, BlockingIOError):
                raise
            raise _locked(self.output_dir, holder) from None
        # The lock is free, so whoever wrote a leftover record is gone. Its pid is not checked: flock is the
        # authority, and a pid means nothing on another host (over NFS, Linux emulates flock with fcntl byte-range
        # locks, which the server arbitrates) or after the pid has been reused.
        if (stale := _read_record(fd)) is not None:
            message = f"taking over {self.path} from a run killed before it released it ({_describe(stale)})"
            warnings.warn(message, StaleLockWarning, stacklevel=2)
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": started, "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Clear the record and drop the lock; does nothing if not held.

        The file stays: removing it would let two runs hold "the" lock at once (one on the unlinked file it
        opened just before the removal, one on a new file at the same path)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Cleared (and synced) before unlocking, so a record on a free lock always means a killed run.
            os.ftruncate(fd, 0)
            os.fsync(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # Not `Self`: the jaxtyping import hook decorates each method alone, and beartype rejects `Self` there.
    def __enter__(self) -> "OutputDirLock":  # noqa: PYI034
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
