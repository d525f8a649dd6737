"""The feature store: float16 features of every region of a region store, in chunks.

A store is a directory::

    meta.json                 format, version, the model it came from (the digest of its
                              weights, its file, backbone, input size, context padding,
                              normalization, classes), the precision and device type the
                              features were computed in, the layers and their sizes, the chunk
                              size, and per split the region store (path, generation, number
                              of regions)
    {split}/{layer}/000000.npy  float16 [C, D]: regions 0 .. C-1 of the split
    {split}/{layer}/000001.npy  regions C .. 2C-1, and so on; the last chunk may be shorter

Row ``i`` of a split is region ``i`` of its region store. Each chunk is written atomically,
so a killed ``rcnn features`` leaves whole chunks only and the next run computes the missing
ones, in the precision and on the kind of device the store records: chunks computed in
bfloat16 and float32 differ by about 0.3%, and a store never mixes them. Readers map the
chunks (``np.load(mmap_mode="r")``) and gather the rows they need.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from rcnn.errors import RcnnError
from rcnn.files import DamagedFileError, atomic_write_bytes, atomic_write_json, read_json

FORMAT = "rcnn-features"
VERSION = 2  # 2: the model's weights digest, precision and device type are recorded
CHUNK = 4096  # regions a file: 32 MB of AlexNet fc7, 72 MB of pool5


class FeatureStoreError(RcnnError):
    """A feature store is missing, incomplete, or does not belong to the model or regions."""


def chunk_path(root: Path, split: str, layer: str, chunk: int) -> Path:
    return root / split / layer / f"{chunk:06d}.npy"


def num_chunks(regions: int, chunk: int) -> int:
    return -(-regions // chunk)


def write_chunk(root: Path, split: str, layer: str, chunk: int, rows: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(rows, dtype=np.float16), allow_pickle=False)
    atomic_write_bytes(chunk_path(root, split, layer, chunk), buf.getvalue())


def read_meta(root: Path) -> dict | None:
    path = root / "meta.json"
    if not path.is_file():
        return None
    meta = read_json(path, "feature store description", "rcnn features --overwrite")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise FeatureStoreError(
            f"{path}: not a version-{VERSION} {FORMAT} store (format {meta.get('format')!r}, "
            f"version {meta.get('version')!r}): make it again with `rcnn features --overwrite`"
        )
    keys = ("model", "precision", "device", "layers", "splits", "chunk")
    missing = [k for k in keys if k not in meta]
    if missing:
        raise DamagedFileError(f"{path}: {', '.join(missing)} missing (damaged?)")
    return meta


def write_meta(root: Path, meta: dict) -> None:
    atomic_write_json(root / "meta.json", {"format": FORMAT, "version": VERSION, **meta})


class FeatureStore:
    """One layer of one split, read-only: ``rows(indices)`` gathers float32 features.

    Raises:
        FeatureStoreError: the store, split or layer is missing or some chunks are not there.
    """

    def __init__(self, root: str | Path, split: str, layer: str):
        self.root, self.split, self.layer = Path(root), split, layer
        meta = read_meta(self.root)
        if meta is None:
            raise FeatureStoreError(
                f"{self.root / 'meta.json'} not found: compute features with `rcnn features`"
            )
        if split not in meta["splits"] or layer not in meta["layers"]:
            raise FeatureStoreError(
                f"{self.root} has no {layer} features of split '{split}' (it has "
                f"{sorted(meta['layers'])} of {sorted(meta['splits'])}): run `rcnn features` "
                f"with --split {split} --layers {layer}"
            )
        self.meta = meta
        self.dim = meta["layers"][layer]
        self.num_regions = meta["splits"][split]["regions"]
        self.chunk = meta["chunk"]
        count = num_chunks(self.num_regions, self.chunk)
        paths = [chunk_path(self.root, split, layer, c) for c in range(count)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FeatureStoreError(
                f"{self.root}: {len(missing)} of {count} {layer} chunks of split '{split}' are "
                "missing (an interrupted run?): run `rcnn features` again to finish"
            )
        rows = [min(self.chunk, self.num_regions - c * self.chunk) for c in range(count)]
        self.chunks = [_map_chunk(p, n, self.dim) for p, n in zip(paths, rows, strict=True)]

    def __len__(self) -> int:
        return self.num_regions

    def rows(self, indices) -> np.ndarray:
        """float32 ``[len(indices), D]`` features of the given regions, in the given order."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.dim), np.float32)
        which, offset = np.divmod(indices, self.chunk)
        for c in np.unique(which):
            mine = np.flatnonzero(which == c)
            out[mine] = self.chunks[c][offset[mine]]
        return out

    def stream(self, indices, block: int = 16384):
        """``(indices of a block, their float32 [B, D] features)``, block by block in order,
        as :meth:`rcnn.heads.stream.FeatureStream.stream` gives them."""
        indices = np.asarray(indices, dtype=np.int64)
        for start in range(0, len(indices), block):
            part = indices[start : start + block]
            yield part, self.rows(part)

    def check_regions(self, regions, data: str) -> None:
        """Refuses features of another region store."""
        recorded = self.meta["splits"][self.split]
        if recorded["regions"] != len(regions):
            why = f"{recorded['regions']} regions, not {len(regions)}"
        elif recorded.get("generation") != regions.info.get("generation"):
            why = (
                f"another `rcnn prepare` run: generation {recorded.get('generation')}, not "
                f"{regions.info.get('generation')}"
            )
        else:
            return
        raise FeatureStoreError(
            f"{self.root} holds features of other regions than {data}/{self.split} ({why}): "
            "run `rcnn features --overwrite` for these regions, or give another --features"
        )


def _map_chunk(path: Path, rows: int, dim: int) -> np.ndarray:
    """One chunk, mapped; a damaged or foreign file is a :class:`FeatureStoreError`."""
    try:
        chunk = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # truncated header, pickled objects, ...
        raise FeatureStoreError(
            f"{path}: unreadable ({err}); delete it and run `rcnn features` again"
        ) from None
    if chunk.dtype != np.float16 or chunk.shape != (rows, dim):
        raise FeatureStoreError(
            f"{path}: {chunk.dtype} {list(chunk.shape)}, not float16 [{rows}, {dim}]; delete "
            "it and run `rcnn features` again"
        )
    return chunk
