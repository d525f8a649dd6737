"""Settings of the data stages: Selective Search proposals and `rcnn prepare`.

Kept free of torch and OpenCV, so that the command line can describe them without importing
either.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from rcnn.data.annotations import resolve_classes, safe_name
from rcnn.data.labels import LabelConfig
from rcnn.data.readers import check_source
from rcnn.errors import ConfigError

MODES = ("quality", "fast")  # Selective Search strategies
# Selective Search takes time and memory in proportion to pixels (docs/performance.md). Larger
# images are shrunk to this for the search (VOC's and COCO's images, at most 500 and 640
# pixels, are searched as they are).
DEFAULT_MAX_SIDE = 1000
# Boxes read of one image of a proposal file (--max-proposals): each box costs its warped crop
# in `rcnn detect` (57,000 boxes of one image took 7.9 GB), and R-CNN's files hold about 2,000
# an image (Selective Search's fast mode), read whole under this cap. Beyond it the first ones
# in the file's order are kept: R-CNN's files list them by Selective Search's rank.
DEFAULT_MAX_PROPOSALS = 10_000


@dataclass(frozen=True)
class ProposalConfig:
    mode: str = "quality"
    max_side: int = DEFAULT_MAX_SIDE  # longer side shrunk to at most this first; 0 = never
    file: str | None = None  # precomputed proposals (R-CNN's .mat layout) instead of a search
    max_proposals: int = DEFAULT_MAX_PROPOSALS  # of an image of `file`; 0 = all

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.max_proposals < 0:
            raise ConfigError(f"--max-proposals must be >= 0 (0 = all), got {self.max_proposals}")
        if self.max_side < 0 or 0 < self.max_side < 32:
            raise ConfigError(f"--max-side must be 0 (off) or >= 32, got {self.max_side}")

    def for_image(self, size: tuple[int, int] | None) -> ProposalConfig:
        """The search an image of ``size`` gets: an image that fits ``max_side`` is searched at
        full size, so its cache entry is the same whatever the cap."""
        if self.max_side and size is not None and max(size) <= self.max_side:
            return replace(self, max_side=0)
        return self

    def cache_tag(self) -> str:
        """What the proposals are: the search's settings and OpenCV's version, or the file's
        digest (changed proposals make other region stores and `rcnn test` folders)."""
        if self.file:
            from rcnn.data.proposal_files import read_proposal_file

            return read_proposal_file(self.file).tag(self.max_proposals)
        import cv2

        # OpenCV's version is part of the key: another release may segment differently.
        # Images are read as stored, their EXIF orientation ignored (rcnn.data.images).
        return (
            f"selective-search/{self.mode}/max_side={self.max_side}/opencv={cv2.__version__}"
            "/stored-pixels"
        )


@dataclass
class PrepareConfig:
    voc_root: str | None  # a VOC folder, or None with coco and images
    out: str
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    classes: list[str] = field(default_factory=lambda: ["car"])
    labels: LabelConfig = field(default_factory=LabelConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    workers: int = 0  # Selective Search processes; 0 = one per core
    cache_dir: str | None = None  # None = the default cache folder
    strict: bool = False
    progress: bool = True
    coco: str | None = None  # COCO instances file ({split} for one per split)
    images: str | None = None  # its images' folder

    def __post_init__(self):
        check_source(self.voc_root, self.coco, self.images)
        self.classes = resolve_classes(list(self.classes))
        if not self.splits:
            raise ConfigError("--split must name at least one split")
        for entry in self.splits:
            store, _, source = entry.partition("=")
            if not safe_name(store) or "=" in source or (_ and not source) or "/" in entry:
                raise ConfigError(
                    f"--split {entry!r}: give NAME or STORE=NAME (e.g. train=train2017)"
                )
        stores = [store for store, _ in self.stores]
        if len(set(stores)) != len(stores):
            raise ConfigError(f"--split names a split twice: {self.splits}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0 (0 = all cores), got {self.workers}")

    @property
    def stores(self) -> list[tuple[str, str]]:
        """``(store, split)`` pairs: ``OUT/{store}/`` is made of the dataset's ``split``
        (``--split train=train2017`` stores COCO's train2017 as the train/ that training
        reads; a plain ``train`` is both)."""
        return [(e.partition("=")[0], e.partition("=")[2] or e) for e in self.splits]
