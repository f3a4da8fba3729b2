"""One live run per run folder: ``RUN/.lock``, held with ``fcntl.flock`` by the driver process.

The lock is an advisory ``flock`` on an open file, so it ends with the process that holds it:
a clean exit, an error, ``kill -9`` or a crash all release it, and a lock file left behind by a
dead driver is not a lock (nothing to clean up by hand). The file's text names the holder (pid,
host, start time) for the message a second run gets. The file is never deleted: removing it
while another process waits on it would let two runs lock two different files of the same name.

``flock`` works on local file systems; on network file systems it depends on the server (NFSv4
emulates it with byte-range locks, some older setups ignore it), see docs/checkpoints.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rlkit.errors import UserError

LOCK_FILE = ".lock"


def _holder(text: str) -> str:
    """``pid P on host H (started T)`` from a lock file's text, as far as it says."""
    try:
        info: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError:
        return "another process"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (started {info.get('started', '?')})"


class RunLock:
    """The exclusive lock of a run folder, held from :meth:`acquire` until :meth:`release` (or exit)."""

    def __init__(self, path: Path, file: IO[str]) -> None:
        self.path = path
        self._file: IO[str] | None = file

    @classmethod
    def acquire(cls, run_dir: Path, command: str = "") -> RunLock:
        """Lock ``run_dir`` for this process.

        Raises:
            UserError: Another live run holds it (naming its pid and host), or the folder cannot
                be written.
        """
        path = run_dir / LOCK_FILE
        try:
            file = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run
        except OSError as exc:
            raise UserError(
                f"cannot write to the run folder {run_dir}: {exc.strerror}",
                hint="choose a writable trainer.out_dir",
            ) from exc
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = _holder(file.read())
            file.close()
            raise UserError(
                f"run folder {run_dir} is in use by another rlkit run: {holder}",
                hint="wait for it to finish, or start this run in another trainer.out_dir "
                "(leave it unset for a fresh folder)",
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if command:
            info["command"] = command
        file.seek(0)
        file.truncate()
        file.write(json.dumps(info) + "\n")
        file.flush()
        os.fsync(file.fileno())
        return cls(path, file)

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        """Give the folder back (idempotent); the file stays, emptied."""
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
        except OSError:
            pass  # the folder went away or read-only: the lock itself still ends with close()
        finally:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
