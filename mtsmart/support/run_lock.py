"""One writer per run folder (and per study): a POSIX record lock on `<folder>/.mtsmart.lock`.

A second process that tries to write into a folder another process is writing to stops at once
with one line naming the holder's pid, host and start time. The lock belongs to the process: the
kernel drops it when the process ends, however it ends (kill -9 included), so a crashed holder
leaves no dead end — the file stays, unlocked. `fcntl.lockf` locks (not `flock`) are honoured by
NFS, so two machines sharing a file system are kept apart too.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

LOCK_FILE = ".mtsmart.lock"


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock; the message says who."""


class FolderLock:
    """`with FolderLock(folder, "output_dir"):` — held for the block (or until the process ends)."""

    def __init__(self, folder: Path, what: str = "output_dir"):
        self.path = Path(folder) / LOCK_FILE
        self.what = what
        self.fd: Optional[int] = None
        self.created = False

    def acquire(self) -> "FolderLock":
        self.created = not self.path.parent.exists()  # a run refused before writing leaves no folder behind
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderInUseError(f"{self.what} {self.path.parent} is in use by {holder}; wait for it to end, "
                                   f"or choose another {self.what}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        if self.created and [p.name for p in self.path.parent.iterdir()] == [LOCK_FILE]:
            self.path.unlink()  # still locked: no other process can be using the folder
            self.path.parent.rmdir()
        fcntl.lockf(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"process {info['pid']} on {info['host']} (since {info['started']})"
    except (OSError, ValueError, KeyError):
        return "another process"
