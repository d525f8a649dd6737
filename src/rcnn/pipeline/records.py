"""What ``rcnn pipeline`` remembers of each stage, so that a re-run does only what changed.

Each stage has a key: a digest of its settings, of the dataset files it reads (their names,
sizes and modification times) and of the keys of the stages it reads from. ``OUT/.stages/
NAME.json`` records the key with ``"state": "started"`` before the stage works and ``"done"``
(with its time and peak memory) after. On a re-run a stage is

* skipped when its record is done with the same key and its outputs are there;
* continued in place when its record is started with the same key (a killed run: the stages
  themselves resume, training from its last epoch, testing from its last image);
* redone otherwise. A finished stage of other settings is moved to ``OUT/.previous/NAME``
  first (the last one a stage), and comes back, without any work, when the pipeline is run
  again with its settings (the newer one then takes its place there).

A changed setting thus changes its stage's key and the keys of every stage after it, and only
those stages run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rcnn.errors import ConfigError
from rcnn.files import atomic_write_json

logger = logging.getLogger(__name__)

RECORDS = ".stages"
PREVIOUS = ".previous"


@dataclass
class Step:
    """One stage of the pipeline: ``run()`` writes ``outputs``; ``settings`` and ``inputs``
    (digests of what it reads outside the pipeline) decide whether it must run again."""

    name: str
    title: str
    outputs: list[Path]
    settings: dict
    run: object  # () -> dict | None, what the report shows of it
    after: list[str] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    required: list[Path] | None = None  # what must be there for it to count as done

    @property
    def check(self) -> list[Path]:
        return self.outputs if self.required is None else self.required


def digest(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def files_digest(paths) -> str:
    """A digest of the names, sizes and modification times of ``paths`` (a missing file
    counts as missing)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()


def dataset_digest(dataset, split: str) -> str:
    """The split's image list and the files of its images and annotations (a COCO file once)."""
    ids = dataset.ids(split)
    paths = dict.fromkeys(str(p) for i in ids for p in (dataset.annotation_path(i),
                                                          dataset.image_path(i)))  # fmt: skip
    return digest([ids, files_digest(paths)])


class Records:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.folder = self.root / RECORDS

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def read(self, name: str, folder: Path | None = None) -> dict | None:
        path = (folder or self.folder) / f"{name}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def write(self, name: str, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path(name), record)

    def previous(self, name: str) -> Path:
        return self.root / PREVIOUS / name


def _present(paths: list[Path]) -> list[Path]:
    return [p for p in paths if p.exists() or p.is_symlink()]


def _move(sources: list[Path], root: Path, target: Path) -> None:
    """Moves each of ``sources`` (inside ``root``) to the same relative place under ``target``."""
    for source in _present(sources):
        place = target / source.relative_to(root)
        place.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, place)


def _remove(paths: list[Path]) -> None:
    for path in _present(paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def plan(records: Records, step: Step, key: str) -> str:
    """What to do with ``step`` (rank 0 decides, before any work): ``skip``, ``restore`` (its
    previous outputs have this key), ``continue`` (a killed run of this key) or ``run``; moves
    and deletes what the decision needs. Outputs that no record accounts for are refused,
    never deleted: the folder holds something else."""
    root, kept = records.root, records.previous(step.name)
    record = records.read(step.name)
    present = _present(step.outputs)
    if record is None and present:
        raise ConfigError(
            f"{present[0]} is there, but no record of `rcnn pipeline` says it made it: choose "
            f"another --out, or move it away"
        )
    state = record.get("state") if record else None
    if record and record.get("key") == key:
        if state == "done" and all(p.exists() for p in step.check):
            return "skip"
        if state == "started":
            return "continue"
    finished = state == "done" and record.get("key") != key  # other settings, complete
    old = records.read(step.name, kept)
    if old and old.get("key") == key and old.get("state") == "done":
        swap = kept.with_name(kept.name + ".swap")
        shutil.rmtree(swap, ignore_errors=True)
        os.replace(kept, swap)
        _keep(records, step, record) if finished else _remove(present)
        _move([swap / p.relative_to(root) for p in step.outputs], swap, root)
        records.write(step.name, old)
        shutil.rmtree(swap)
        return "restore"
    if finished:
        shutil.rmtree(kept, ignore_errors=True)  # an older one still: the newer is kept
        _keep(records, step, record)
    else:
        _remove(present)  # a killed run of other settings, or a finished one made incomplete
    return "run"


def _keep(records: Records, step: Step, record: dict) -> None:
    kept = records.previous(step.name)
    _move(step.outputs, records.root, kept)
    kept.mkdir(parents=True, exist_ok=True)
    atomic_write_json(kept / f"{step.name}.json", record)


class PeakMemory:
    """The peak resident memory of this process while inside (sampled every 20 ms from
    ``/proc/self/statm``) and, on CUDA, the peak memory allocated by torch."""

    def __init__(self):
        self.peak_rss = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_rss = max(self.peak_rss, self._rss())

    def __enter__(self) -> PeakMemory:
        self.peak_rss = self._rss()
        self.cuda = _cuda()
        if self.cuda is not None:
            self.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._rss())
        cuda = self.cuda or _cuda()
        self.peak_gpu = cuda.max_memory_allocated() if cuda is not None else 0


def _cuda():
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def done_record(key: str, step: Step, seconds: float, peak: PeakMemory, summary) -> dict:
    return {
        "key": key,
        "state": "done",
        "title": step.title,
        "settings": step.settings,
        "inputs": step.inputs,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak.peak_rss / 2**20, 1),
        "peak_gpu_mb": round(peak.peak_gpu / 2**20, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "summary": summary,
    }
