"""One run at a time on one output directory: an exclusive ``flock`` on ``<save_path>/.quantjob-lock``.

The kernel drops the lock when the process that holds it ends, however it ends (SIGKILL included),
so a dead run never blocks the next one. The holder writes who it is into the file (run id, pid,
host), and a refused run names it. The lock is taken without waiting: a second run is refused at
once instead of racing the first. The file is removed by its holder when the run ends; a holder
re-checks after locking that the path still names the file it locked, so a file removed in between
is never mistaken for the lock (flock works on local file systems, NFSv4 and CephFS). The file is
opened without following a link: a link planted at its name is refused, never written through.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from quantjob.worker.errors import QuantJobError
from quantjob.worker.savers.staging import open_no_follow

LOCK_FILE = ".quantjob-lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        run = f"run {info['run_id']!r} (pid {info['pid']} on {info['host']})"
        owner = info.get("quantjob")
        return f"QuantJob {owner}, {run}" if isinstance(owner, str) and owner else run
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "another quantjob run (it has not said which yet)"


def _quantjob() -> str | None:
    """``<namespace>/<name> attempt <N>`` when run by the operator (its pod's variables), else None:
    a second group on the same output (an old attempt's rank still writing, or two QuantJobs with one
    save path) is then refused with the QuantJob that holds it."""
    name = os.environ.get("QUANTJOB_NAME")
    if not name:
        return None
    namespace, attempt = os.environ.get("QUANTJOB_NAMESPACE"), os.environ.get("QUANTJOB_ATTEMPT")
    return f"{namespace + '/' if namespace else ''}{name}{f' attempt {attempt}' if attempt else ''}"


class OutputLock:
    """Held from ``acquire`` until ``release`` or the end of the process."""

    def __init__(self, save_path: Path) -> None:
        self.path = save_path / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, run_id: str) -> None:
        """Lock the output directory for ``run_id``; QuantJobError naming the holder when another
        process (or another saver of this process) holds it."""
        while True:
            fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise QuantJobError(f"save path {self.path.parent} is in use by {_holder(self.path)}; fix: wait for "
                                    "it to end (or stop it), or choose another --save_path") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and our lock: try again
        info = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(), "quantjob": _quantjob()}
        data = json.dumps(info).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd

    def __del__(self) -> None:  # a saver dropped without finish or abort (the process goes on)
        try:
            self.release()
        except Exception:  # noqa: BLE001, S110  # interpreter shutdown: the kernel drops the lock anyway
            pass

    def release(self) -> None:
        """Remove the lock file and unlock (no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)
