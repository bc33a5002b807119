"""Crash-safe file writes: write a temporary file beside the target, fsync, then rename.

A kill at any moment leaves either the old file or the new one, never a torn file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: Path | str) -> None:
    """The mode a new file gets from open() under the user's umask; for writers that create 0600
    files (mkstemp, safetensors), so a colleague on a shared machine can read a run."""
    os.chmod(path, 0o666 & ~current_umask())


def atomic_write(path: Path | str, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then atomically move tmp_path to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # mkstemp creates 0600: the file gets the mode any tool's output has under the user's umask.
        give_default_mode(tmp_path)
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


class OutputDirError(ValueError):
    """An output folder that cannot be used; the message names it."""


def check_writable_dir(out: Path, key: str = "output_dir") -> None:
    """Refuse an output folder that is a file or lies where nothing can be written, before any
    work: probes the folder, or its nearest existing parent, with a temporary file."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{key} {out}: is a file, not a folder")
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutputDirError(f"{key} {out}: {probe_dir} is a file, so the folder cannot be made")
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".mtsmart-write-probe-"):
            pass
    except OSError as error:
        raise OutputDirError(f"{key} {out}: cannot write in {probe_dir} ({error.strerror or error})") from None
