"""Atomic writes, output folders and locks, and the readers of damaged or foreign files."""

import errno
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from rcnn.errors import RcnnError
from rcnn.files import (
    DamagedFileError,
    atomic_write_bytes,
    load_npz,
    output_dir,
    output_lock,
    read_arrays,
    read_json,
    read_regular_file,
    remove_temporaries,
    write_arrays,
)


def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(target)
    with pytest.raises(RcnnError, match="symbolic link"), output_lock(out, "rcnn test"):
        pass
    assert target.read_text() == "precious\n"
    (out / ".lock").unlink()
    (out / ".lock").mkdir()
    with pytest.raises((RcnnError, OSError)), output_lock(out, "rcnn test"):
        pass


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    with output_lock(tmp_path, "rcnn prepare"):
        assert "rcnn prepare (pid" in (tmp_path / ".lock").read_text()
        refused = pytest.raises(RcnnError, match=r"being written by rcnn prepare \(pid")
        with refused, output_lock(tmp_path, "rcnn test"):
            pass
    with output_lock(tmp_path, "rcnn test"):
        pass


def test_temporaries_of_interrupted_writes_are_removed_and_nothing_else(tmp_path):
    atomic_write_bytes(tmp_path / "a.npy", b"whole")
    left = [tmp_path / ".a.npy.k2j_x8q1.tmp", tmp_path / ".metrics.json.abcdefgh.tmp"]
    for path in left:
        path.write_bytes(b"half")
    mine = [tmp_path / ".hidden.tmp", tmp_path / "notes.tmp", tmp_path / ".config"]
    for path in mine:
        path.write_bytes(b"the user's")
    assert remove_temporaries(tmp_path) == 2
    assert not any(p.exists() for p in left) and all(p.exists() for p in mine)
    assert (tmp_path / "a.npy").read_bytes() == b"whole"


def test_any_legal_name_is_written_and_its_interrupted_write_cleaned_up(tmp_path):
    # 255 bytes, the longest name a file system takes: the temporary file must be shorter, and
    # a cut name must not end in half a character.
    names = ["a" * 251 + ".npz", "a" + "\u00e9" * 125 + ".jpg"]
    for name in names:
        atomic_write_bytes(tmp_path / name, b"whole")
        assert len(os.fsencode(name)) <= 255 and (tmp_path / name).read_bytes() == b"whole"
    # Killed mid-write (by SIGXFSZ, over a file size limit): its temporary file stays behind.
    code = (
        "import resource, signal\n"
        "from rcnn.files import atomic_write_bytes\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        f"atomic_write_bytes({str(tmp_path / names[1])!r}, b'x' * 5000)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == -signal.SIGXFSZ, done.stderr
    (left,) = set(os.listdir(tmp_path)) - set(names)
    assert left.startswith(".a\u00e9\u00e9") and left.endswith(".tmp"), left
    assert len(left.encode("utf-8")) < 100  # short, and whole characters (UTF-8 encodes it)
    assert remove_temporaries(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    assert (tmp_path / names[1]).read_bytes() == b"whole"


def test_a_failed_write_names_the_file_and_leaves_the_old_one(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_bytes(path, b"old")
    # A real write error in a child process: a file size limit, as a full disk would fail.
    code = (
        "import resource, signal, sys\n"
        "from rcnn.files import atomic_write_bytes\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "try:\n"
        f"    atomic_write_bytes({str(path)!r}, b'x' * 5000)\n"
        "except OSError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert f"cannot write {path}" in done.stdout, done.stdout + done.stderr
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json"
    ]


def test_output_dir_names_a_file_or_dangling_link(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RcnnError, match="--out .*file is a file, not a folder"):
        output_dir(tmp_path / "file")
    with pytest.raises(RcnnError, match="--out .*dangling is a link to nothing"):
        output_dir(tmp_path / "dangling")
    with pytest.raises(RcnnError, match="a part of the path is a file"):
        output_dir(tmp_path / "file" / "sub")
    assert output_dir(tmp_path / "new" / "deep").is_dir()


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result = {}
    reader = threading.Thread(target=lambda: result.setdefault("err", _error(fifo)))
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO must not wait for a writer"
    assert result["err"].errno == errno.EINVAL and "not a regular file" in str(result["err"])
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    with pytest.raises(OSError, match="not a regular file"):
        read_regular_file(tmp_path / "zero.jpg")
    # A folder is named by its path (os.fdopen's own error names the file descriptor).
    with pytest.raises(IsADirectoryError, match=re.escape(f"folder, not a file: '{tmp_path}'")):
        read_regular_file(tmp_path)


def _error(path):
    try:
        read_regular_file(path)
    except OSError as err:
        return err
    return None


def test_damaged_json_and_npz_are_one_message(tmp_path):
    cases = {"bad.json": b"{not json", "latin.json": "{\"a\": \"\xe9\"}".encode("latin-1"),
             "list.json": b"[1, 2]", "deep.json": b"[" * 200000 + b"]" * 200000}  # fmt: skip
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DamagedFileError, match=name):
            read_json(tmp_path / name, "settings file")
    with pytest.raises(DamagedFileError, match="nested too deeply"):  # not a RecursionError
        read_json(tmp_path / "deep.json", "settings file")
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "objects.npz").read_bytes()[:40])
    for name in ("objects.npz", "cut.npz"):
        with pytest.raises(DamagedFileError, match=name):
            load_npz(tmp_path / name, "detections file")


def test_arrays_and_settings_written_apart_are_refused_together(tmp_path):
    write_arrays(tmp_path, "svm", {"weights": np.ones((1, 3))}, {"scale": 2.0})
    arrays, meta = read_arrays(tmp_path, "svm", "rcnn train-svm", ["weights"], ["scale"])
    assert meta == {"scale": 2.0} and arrays["weights"].shape == (1, 3)
    old_json = (tmp_path / "svm.json").read_bytes()
    # A run killed between its two renames: new arrays beside the old settings.
    write_arrays(tmp_path, "svm", {"weights": np.zeros((1, 3))}, {"scale": 3.0})
    (tmp_path / "svm.json").write_bytes(old_json)
    with pytest.raises(DamagedFileError, match="not the file svm.json was written with"):
        read_arrays(tmp_path, "svm", "rcnn train-svm")
    write_arrays(tmp_path, "svm", {"other": np.zeros(2)}, {})
    with pytest.raises(DamagedFileError, match="weights missing"):
        read_arrays(tmp_path, "svm", "rcnn train-svm", ["weights"])
    with pytest.raises(DamagedFileError, match="scale missing"):
        read_arrays(tmp_path, "svm", "rcnn train-svm", [], ["scale"])
