"""Atomic file writes (a temporary file in the same folder, then ``os.replace``) and
output locks.

A reader sees either the old file or the new one, never half of one, even after kill -9.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path

from rcnn.errors import RcnnError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would make shared outputs unreadable to others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def output_lock(folder: str | Path, command: str):
    """Holds ``folder/.lock`` for one writer at a time; a second writer is refused with a
    message. The lock is the kernel's (``flock``): a killed holder releases it."""
    path = Path(folder) / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RcnnError(
                f"{folder} is being written by {holder}; wait for it to finish or choose "
                "another output folder"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{command} (pid {os.getpid()})\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def write_arrays(folder: str | Path, stem: str, arrays: dict, meta: dict) -> None:
    """``folder/stem.npz`` (the arrays) and ``folder/stem.json`` (the rest), atomically."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(folder) / f"{stem}.npz", buf.getvalue())
    atomic_write_json(Path(folder) / f"{stem}.json", meta)


def read_arrays(folder: str | Path, stem: str, made_by: str) -> tuple[dict, dict]:
    """The arrays and the JSON of :func:`write_arrays`; ``made_by`` names the command that
    writes them, for the message when they are missing."""
    import numpy as np

    folder = Path(folder)
    if not (folder / f"{stem}.json").is_file() or not (folder / f"{stem}.npz").is_file():
        raise FileNotFoundError(f"{folder / (stem + '.json')} not found: run `{made_by}` first")
    with np.load(folder / f"{stem}.npz") as data:
        arrays = {name: data[name] for name in data.files}
    return arrays, json.loads((folder / f"{stem}.json").read_text())


def file_identity(path: str | Path) -> dict:
    """What tells one file from another without reading it: resolved path, size, mtime."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
