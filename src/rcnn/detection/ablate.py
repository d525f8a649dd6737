"""``rcnn ablate``: the R-CNN paper's Table 2 on one dataset.

SVMs on pool5, fc6 and fc7 of the network before fine-tuning (the weights the run started
from) and of the fine-tuned one, fc7 with box regression, and the fine-tuned network's own
softmax, each scored by ``rcnn test``'s rules on the same split. Each network's features are
computed once for its three layers' SVMs (on the fly, no store), and once a test image for
all of its rows. Writes the SVMs to ``OUT/heads/{initial,fine-tuned}/{pool5,fc6,fc7}/``, each
row's result files and metrics to ``OUT/{initial,fine-tuned}/{row}/``, and the table, with the
paper's VOC2007 numbers beside for reference, to ``OUT/ablation.{md,json,png}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from rcnn.detection.config import Variant
from rcnn.detection.testing import TestConfig, run_test
from rcnn.errors import RcnnError
from rcnn.files import atomic_write_bytes, atomic_write_json
from rcnn.heads.config import BBoxConfig, HeadConfig, SVMConfig, run_part
from rcnn.heads.train import run_layer_svms, run_train_bbox
from rcnn.modeling.checkpoint import initial_network
from rcnn.modeling.config import LAYERS
from rcnn.runtime.distributed import broadcast, rank_zero_first
from rcnn.runtime.stage import run_stage


@dataclass(frozen=True)
class Row:
    name: str  # its folder
    network: str  # "initial" or "fine-tuned"
    layer: str | None  # the SVMs' layer; None: the network's softmax
    bbox: bool
    title: str
    paper: float  # the paper's VOC2007 test mAP (%), for reference


ROWS = (
    Row("pool5", "initial", "pool5", False, "pool5, not fine-tuned", 44.2),
    Row("fc6", "initial", "fc6", False, "fc6, not fine-tuned", 46.2),
    Row("fc7", "initial", "fc7", False, "fc7, not fine-tuned", 44.7),
    Row("pool5", "fine-tuned", "pool5", False, "pool5, fine-tuned", 47.3),
    Row("fc6", "fine-tuned", "fc6", False, "fc6, fine-tuned", 53.1),
    Row("fc7", "fine-tuned", "fc7", False, "fc7, fine-tuned", 54.2),
    Row("fc7-bbox", "fine-tuned", "fc7", True, "fc7, fine-tuned, + box regression", 58.5),
    # Not in Table 2: its appendix B, the fine-tuned network's softmax in place of the SVMs.
    Row("softmax", "fine-tuned", None, False, "fine-tuned softmax (no SVM)", 50.9),
)


@dataclass
class AblationConfig:
    """The ablation of a run: ``test`` names the run (``test.model``, a run folder), the
    dataset, split and ``OUT``; ``data`` the regions of ``rcnn prepare --preset paper`` that
    the SVMs train on (split ``train_split``). The box regressors are the run's (``bbox_reg``,
    default ``RUN/bbox``), trained on the fly into ``OUT/heads`` when it has none."""

    test: TestConfig
    data: str
    train_split: str = "trainval"
    svm: SVMConfig = field(default_factory=SVMConfig)
    bbox_reg: str | None = None
    # The fine-tuned network's fc7 SVMs and box regressors in the run's svm/ and bbox/ (where
    # `rcnn train-svm` and `train-bbox` put them, and `rcnn detect` looks): `rcnn pipeline`.
    into_run: bool = False


def key(row: Row) -> str:
    return f"{row.network}/{row.name}"


def run_ablation(cfg: AblationConfig) -> dict | None:
    """Trains what the rows need and scores every row; returns ``{"rows": {key: metrics},
    "table": markdown, "out": OUT}`` (``None`` on torchrun's other ranks)."""
    from rcnn.data.regions import store_dir

    test, out = cfg.test, Path(cfg.test.out)
    run = Path(test.model)
    with run_stage("rcnn ablate", test.detector.inference.device, cfg) as stage:
        # Named before any work, once the ranks agree on their arguments.
        store_dir(cfg.data, cfg.train_split, flag="--train-split")
        stage.claim(out, lambda folder: claim_ablation(folder, cfg))
        found: dict = {}
        rank_zero_first(stage.world, lambda: found.update(initial=initial_network(run, out)))
        initial, what = broadcast(found.get("initial"))
        networks = {"initial": initial, "fine-tuned": run / "best.pt"}
        heads = HeadConfig(model="", data=cfg.data, split=cfg.train_split,
                           inference=test.detector.inference, progress=test.progress)  # fmt: skip
        folders = {}
        for name, model in networks.items():
            layer_heads = replace(heads, model=str(model), out=str(out / "heads" / name))
            own = {"fc7": run / "svm"} if cfg.into_run and name == "fine-tuned" else None
            folders[name] = run_layer_svms(layer_heads, cfg.svm, LAYERS, own)
        bbox = Path(cfg.bbox_reg or run_part(run, "bbox"))
        if not (bbox / "bbox.npz").is_file():
            bbox = run / "bbox" if cfg.into_run else out / "heads" / "fine-tuned" / "bbox"
            own = replace(heads, model=str(run / "best.pt"), out=str(bbox), overwrite=True)
            run_train_bbox(own, BBoxConfig())  # into a folder of its own, without regressors
        rows = {}
        for name, model in networks.items():
            layers = broadcast(folders[name])
            variants = [_variant(row, layers) for row in ROWS if row.network == name]
            detector = replace(test.detector, bbox_reg=str(bbox))
            scored = run_test(replace(test, model=str(model), out=str(out / name),
                                      variants=variants, detector=detector))  # fmt: skip
            if scored is not None:
                rows.update({f"{name}/{v}": m for v, m in scored.items()})
        if not stage.world.is_main:
            return None
    return _report(out, rows, test.split, what)


SETTINGS = "ablation-settings.json"


def ablation_record(cfg: AblationConfig) -> dict:
    """What an ablation folder's results depend on: the settings (without each process's
    own) and the bytes of the networks they come from."""
    from rcnn.files import file_digest
    from rcnn.runtime.stage import shared_settings

    run = Path(cfg.test.model)
    networks = {name: file_digest(run / name) for name in ("best.pt", "initial.pt")
                if (run / name).is_file()}  # fmt: skip
    return {"settings": shared_settings(cfg, drop={"overwrite"}), "networks": networks}


def claim_ablation(out: Path, cfg: AblationConfig) -> None:
    """Refuses, before anything is trained or written, an ``out`` holding an ablation of other
    settings or networks (unless ``--overwrite``), then records this one's."""
    import json

    record = ablation_record(cfg)
    path = out / SETTINGS
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        found = None
    found = found if isinstance(found, dict) else None
    made = [n for n in ("heads", "initial", "fine-tuned", "ablation.json") if (out / n).exists()]
    if found != record and (found is not None or made) and not cfg.test.overwrite:
        if found is None:
            differ = ["results of an unknown version"]
        else:
            differ = [_flag(d) for d in _differences(found.get("settings"), record["settings"])]
            if found.get("networks") != record["networks"]:
                differ.append("the networks' weights")
        differ = ", ".join(differ)
        raise RcnnError(
            f"--out {out} holds an ablation made otherwise ({differ}); choose another --out "
            "or pass --overwrite"
        )
    atomic_write_json(path, record)


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]  # fmt: skip
    return [] if a == b else [prefix.rstrip(".")]


def _flag(setting: str) -> str:
    """The flag of a setting of the ablation's record (``test.detector.nms`` is ``--nms``)."""
    name = setting.rsplit(".", 1)[-1]
    return "MODEL" if setting == "test.model" else "--" + name.replace("_", "-")


def _variant(row: Row, layers: dict) -> Variant:
    if row.layer is None:
        return Variant(row.name, "softmax")
    return Variant(row.name, "svm", row.bbox, str(layers[row.layer]))


def _report(out: Path, rows: dict, split: str, initial: str) -> dict:
    table = format_table(rows, initial)
    atomic_write_bytes(out / "ablation.md", (table + "\n").encode())
    summary = [  # a list: the paper's order
        {
            "row": key(row),
            "title": row.title,
            "paper_voc2007_map": row.paper,
            "map_07": rows[key(row)]["map_07"],
            "map": rows[key(row)]["map"],
            "map_07_strict": rows[key(row)]["map_07_strict"],
            "ap_07": {c: v["ap_07"] for c, v in rows[key(row)]["classes"].items()},
            "ap": {c: v["ap"] for c, v in rows[key(row)]["classes"].items()},
        }
        for row in ROWS
    ]
    atomic_write_json(out / "ablation.json", {"initial_network": initial, "rows": summary})
    plot_ablation(summary, out / "ablation.png", split)
    return {"rows": rows, "table": table, "out": str(out), "initial_network": initial}


def format_table(rows: dict, initial: str) -> str:
    """Markdown: one row per line of Table 2, VOC2007 11-point AP per class, both mAPs, the
    11-point mAP when a detection must overlap its object by more than 0.7, and the paper's
    VOC2007 mAP (not measured here: for reference)."""
    classes = list(next(iter(rows.values()))["classes"])
    head = ["", *classes, "mAP (07)", "mAP (area)", "mAP (07) IoU 0.7", "paper, VOC2007"]
    lines = [
        f"Not fine-tuned: {initial}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    for row in ROWS:
        m = rows[key(row)]
        cells = [f"{m['classes'][c]['ap_07']:.3f}" for c in classes]
        line = [row.title, *cells, f"{m['map_07']:.3f}", f"{m['map']:.3f}",
                f"{m['map_07_strict']:.3f}", f"{row.paper / 100:.3f}"]  # fmt: skip
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def plot_ablation(summary: list[dict], path: Path, split: str) -> None:
    """Each row's mAP measured here beside the paper's VOC2007 one."""
    import numpy as np
    from matplotlib.figure import Figure

    from rcnn.evaluation.plots import DPI, save_figure

    titles = [s["title"] for s in summary]
    measured = [s["map_07"] for s in summary]
    paper = [s["paper_voc2007_map"] / 100 for s in summary]
    fig = Figure(figsize=(9, 4.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(titles))
    bars = ax.barh(y - 0.2, measured, 0.4, label=f"measured, {split} split")
    ax.barh(y + 0.2, paper, 0.4, label="the paper, VOC2007 test (reference)", alpha=0.5)
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_yticks(y, titles)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("mAP (VOC2007 11-point)")
    ax.set_title("R-CNN's Table 2: SVMs on each layer, before and after fine-tuning")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)
