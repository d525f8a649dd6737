"""Files: atomic writes (a temporary file in the same folder, then ``os.replace``), output
folders and their locks, and readers that turn a damaged or foreign file into one message.

A reader sees either the old file or the new one, never half of one, even after kill -9.
Outputs made of several files (arrays and their settings) carry the digest of their arrays in
the settings file, so a pair that an interrupted run left mismatched is refused, not trusted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from rcnn.errors import ConfigError, RcnnError

# The temporary files of atomic_write_bytes: ".NAME." + mkstemp's 8 random characters + ".tmp",
# NAME cut to its first _NAME_KEPT bytes: a legal name of 255 bytes must still give a legal
# temporary name (a file system's limit is 255 bytes a name).
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_NAME_KEPT = 64


class DamagedFileError(RcnnError):
    """A file is unreadable, truncated, or not the kind of file it should be."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        prefix = _temporary_prefix(path.name)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would make shared outputs unreadable to others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
            # "No space left on device" alone does not say which output could not be written.
            why = f"cannot write {path}: {err.strerror or err}"
            raise (OSError(err.errno, why) if err.errno else OSError(why)) from err
        raise


def _temporary_prefix(name: str) -> str:
    """``.NAME.`` with NAME cut to whole characters of at most :data:`_NAME_KEPT` bytes."""
    kept = os.fsencode(name)[:_NAME_KEPT].decode("utf-8", "ignore") or "file"
    return f".{kept}."


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def remove_temporaries(folder: str | Path) -> int:
    """Deletes the temporary files that interrupted atomic writes left in ``folder`` (not in
    its subfolders); call it only while holding the folder's lock. Returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if _TEMPORARY.match(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def output_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as an output folder, created if missing; a file or a dangling link there is an
    error naming ``flag``."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{flag} {path} is a link to nothing ({os.readlink(path)})")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder; choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a parent is a file
        raise ConfigError(f"{flag} {path}: a part of the path is a file, not a folder") from None
    return path


@contextlib.contextmanager
def output_lock(folder: str | Path, command: str):
    """Holds ``folder/.lock`` for one writer at a time; a second writer is refused with a
    message. The lock is the kernel's (``flock``): a killed holder releases it. A link or
    anything but a plain file at ``.lock`` is refused, never followed."""
    path = Path(folder) / ".lock"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RcnnError(f"{path} is a symbolic link; remove it (rcnn makes its own)") from None
        raise
    with os.fdopen(fd, "r+") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RcnnError(f"{path} is not a plain file; remove it (rcnn makes its own)")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = f.read().strip() or "another process"
            raise RcnnError(
                f"{folder} is being written by {holder}; wait for it to finish or choose "
                "another output folder"
            ) from None
        f.truncate(0)
        f.write(f"{command} (pid {os.getpid()})\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of a plain file (a link to one is followed). A FIFO, a device such as
    ``/dev/zero`` or a folder is refused with an ``OSError`` naming it, instead of blocking or
    reading without end."""
    path = Path(path)
    # O_NONBLOCK: opening a FIFO must not wait for a writer before fstat can refuse it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        # Before os.fdopen, whose error for a folder names the descriptor, not the path.
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            what = "is a folder, not a file" if stat.S_ISDIR(kind) else "not a regular file"
            raise OSError(errno.EISDIR if stat.S_ISDIR(kind) else errno.EINVAL, what, str(path))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read()


def parse_json(text: str):
    """``json.loads``, where nesting too deep for Python's parser is a ``ValueError`` like
    any other malformed JSON, rather than a ``RecursionError``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("arrays or objects nested too deeply to read") from None


def is_regular_file(path: str | Path) -> bool:
    """Whether ``path`` is (or links to) a plain file; never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_json(path: str | Path, what: str, made_by: str | None = None) -> dict:
    """A JSON object from ``path``; anything else (missing, not UTF-8, not JSON, not an
    object) is a :class:`DamagedFileError` naming the file and what it should be."""
    path = Path(path)
    again = f"; run `{made_by}` again" if made_by else ""
    try:
        value = parse_json(read_regular_file(path).decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:  # not UTF-8, not JSON
        raise DamagedFileError(f"{path}: not a readable {what} ({err}){again}") from None
    if not isinstance(value, dict):
        raise DamagedFileError(f"{path}: not a {what} (a JSON object expected){again}")
    return value


def require_keys(mapping: dict, keys, path: str | Path, made_by: str | None = None) -> None:
    missing = [k for k in keys if k not in mapping]
    if missing:
        again = f"; run `{made_by}` again" if made_by else ""
        raise DamagedFileError(f"{path}: {', '.join(missing)} missing (damaged?){again}")


def load_npz(
    source: str | Path | bytes, what: str, made_by: str | None = None, name: str | Path = ""
) -> dict:
    """Every array of an ``.npz`` file (or its bytes, read from the file ``name``), read at
    once. Pickled objects are never loaded; a truncated or foreign file is a
    :class:`DamagedFileError`."""
    import numpy as np

    name = str(name or ("data" if isinstance(source, bytes) else source))
    again = f"; run `{made_by}` again" if made_by else ""
    try:
        data = source if isinstance(source, bytes) else read_regular_file(source)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise
    except Exception as err:  # BadZipFile, EOFError, zlib errors, pickled arrays, ...
        raise DamagedFileError(f"{name}: not a readable {what} ({err}){again}") from None


def npz_bytes(arrays: dict) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_arrays(folder: str | Path, stem: str, arrays: dict, meta: dict) -> None:
    """``folder/stem.npz`` (the arrays), then ``folder/stem.json`` (the rest, with the digest
    of the ``.npz``): a kill between the two leaves a pair that :func:`read_arrays` refuses."""
    data = npz_bytes(arrays)
    atomic_write_bytes(Path(folder) / f"{stem}.npz", data)
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_json(Path(folder) / f"{stem}.json", {**meta, "npz_sha256": digest})


def read_arrays(
    folder: str | Path, stem: str, made_by: str, arrays=(), keys=()
) -> tuple[dict, dict]:
    """The arrays and the JSON of :func:`write_arrays`; ``made_by`` names the command that
    writes them. Missing ``arrays`` or ``keys``, damage, or an ``.npz`` that is not the one
    its ``.json`` was written with are reported as a :class:`DamagedFileError`."""
    folder = Path(folder)
    json_path, npz_path = folder / f"{stem}.json", folder / f"{stem}.npz"
    if not json_path.is_file() or not npz_path.is_file():
        raise FileNotFoundError(f"{json_path} not found: run `{made_by}` first")
    meta = read_json(json_path, f"{made_by} output", made_by)
    try:
        data = read_regular_file(npz_path)
    except OSError as err:
        raise DamagedFileError(f"{npz_path}: unreadable ({err})") from None
    if meta.pop("npz_sha256", None) != hashlib.sha256(data).hexdigest():
        raise DamagedFileError(
            f"{npz_path} is not the file {json_path.name} was written with (an interrupted "
            f"or older `{made_by}`?): run `{made_by}` again"
        )
    loaded = load_npz(data, f"{made_by} output", made_by, npz_path)
    require_keys(loaded, arrays, npz_path, made_by)
    require_keys(meta, keys, json_path, made_by)
    return loaded, meta


def file_identity(path: str | Path) -> dict:
    """What tells one file from another without reading it: resolved path, size, mtime."""
    path = Path(path).resolve()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
