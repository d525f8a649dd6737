"""``rcnn pipeline``: the whole of R-CNN on a VOC or COCO dataset, stage by stage.

    regions      rcnn prepare (the preset's rules) of the train and val splits
    regions-svm  rcnn prepare --preset paper of the SVMs' split (ground truth as positives)
    train        rcnn train (fine-tuning)
    evaluate     rcnn evaluate of the best checkpoint on every val region
    ablation     rcnn ablate: SVMs on pool5, fc6 and fc7 before and after fine-tuning, box
                 regression, every scorer on the test split (VOC and COCO metrics, top false
                 positives); the fine-tuned fc7 SVMs and the box regressors go to RUN/svm and
                 RUN/bbox, where `rcnn detect` and `rcnn.Detector` find them

Writes ``OUT/report.md``. Each stage's settings, inputs, time and peak memory are recorded
(:mod:`rcnn.pipeline.records`): a re-run goes on where a killed one stopped, does nothing
when nothing changed, and redoes only the stages a changed setting or file affects. Under
torchrun every stage runs across the processes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from rcnn.data.annotations import DatasetError
from rcnn.data.config import PrepareConfig
from rcnn.data.labels import PRESETS as LABEL_PRESETS
from rcnn.data.readers import open_dataset
from rcnn.detection.config import eval_detector_config
from rcnn.pipeline.config import PipelineConfig
from rcnn.pipeline.records import (
    PeakMemory,
    Records,
    Step,
    dataset_digest,
    digest,
    done_record,
    plan,
)
from rcnn.runtime.stage import shared_settings
from rcnn.training.config import train_config

logger = logging.getLogger(__name__)


def resolved(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with what ``--device auto`` and the default precision mean on this machine, so
    that the stages' records compare what runs: ``--device auto`` where it means the CPU is no
    change from ``--device cpu``, nor ``--amp`` from the default where bfloat16 is native."""
    from rcnn.runtime.device import default_amp, resolve_device

    device = resolve_device(cfg.inference.device)
    name = device.type if cfg.inference.device == "auto" else cfg.inference.device
    amp = default_amp(device) if cfg.inference.amp is None else cfg.inference.amp
    return replace(cfg, inference=replace(cfg.inference, device=name, amp=amp))


def svm_split_of(cfg: PipelineConfig, dataset) -> str:
    """``--svm-split``, or trainval where the dataset has it (the paper's), else train."""
    if cfg.svm_split:
        return cfg.svm_split
    try:
        dataset.ids("trainval")
    except (DatasetError, OSError):
        return cfg.train_split
    return "trainval"


def proposal_file_of(cfg: PipelineConfig, dataset, splits: list[str]):
    """The first of ``--proposals``' files holding every image of ``splits`` (``None``
    without files: Selective Search); a one-line error naming the splits when none does."""
    from rcnn.data.proposal_files import ProposalFileError, read_proposal_file

    if not cfg.proposal_files:
        return None
    ids = [i for split in splits for i in dataset.ids(split)]
    lacking = []
    for path in cfg.proposal_files:
        found = read_proposal_file(path)
        missing = sum(i not in found.boxes for i in ids)
        if not missing:
            return found
        lacking.append(f"{path} lacks {missing}")
    raise ProposalFileError(
        f"--proposals: no file holds every image of split {' + '.join(splits)} "
        f"({len(ids)} images; {', '.join(lacking)}); give one file holding them all (`rcnn "
        "proposals --split trainval` writes VOC's train and val together)"
    )


def steps_of(cfg: PipelineConfig, dataset, svm_split: str) -> list[Step]:
    from rcnn.detection.ablate import AblationConfig, run_ablation
    from rcnn.detection.testing import TestConfig
    from rcnn.evaluation.evaluate import run_evaluate
    from rcnn.training.run import RUN_FILES
    from rcnn.training.train import run_train

    out = Path(cfg.out)
    run, source = out / "run", {"voc_root": cfg.voc_root, "coco": cfg.coco, "images": cfg.images}

    proposal_files = {}  # split(s) -> the proposal file they read, or None

    def proposals_of(*splits: str):
        key = " + ".join(splits)
        if key not in proposal_files:
            proposal_files[key] = proposal_file_of(cfg, dataset, list(splits))
        return proposal_files[key]

    def prepare(folder: str, splits: dict[str, str], labels: str) -> PrepareConfig:
        found = proposals_of(*splits.values())
        proposals = replace(cfg.proposals, file=found and str(found.path))
        return PrepareConfig(**source, out=str(out / folder),
                             splits=[f"{k}={v}" for k, v in splits.items()], classes=cfg.classes,
                             labels=LABEL_PRESETS[labels], proposals=proposals,
                             workers=cfg.workers, cache_dir=cfg.cache_dir,
                             progress=cfg.progress)  # fmt: skip

    def files(*splits: str) -> dict:
        found = {split: dataset_digest(dataset, split) for split in splits}
        chosen = proposals_of(*splits)
        if chosen is not None:  # the file's bytes, not only its name, decide a redo
            found["proposals"] = chosen.digest
        return found

    # The stores are named train, val (what `rcnn train` reads) and svm, whatever the splits.
    regions = prepare("regions", {"train": cfg.train_split, "val": cfg.val_split}, cfg.labels)
    paper = prepare("regions-svm", {"svm": svm_split}, "paper")
    tested = proposals_of(cfg.test_split)
    overrides = {"workers": cfg.inference.threads, "device": cfg.inference.device,
                 "amp": cfg.inference.amp, **cfg.train}  # fmt: skip
    train = train_config(cfg.preset, data=regions.out, out=str(run), progress=cfg.progress,
                         **overrides)  # fmt: skip
    test = TestConfig(str(run), cfg.voc_root, str(out / "ablation"), split=cfg.test_split,
                      detector=eval_detector_config(
                          mode=cfg.proposals.mode, max_side=cfg.proposals.max_side, nms=cfg.nms,
                          proposals=tested and str(tested.path),
                          max_proposals=cfg.proposals.max_proposals, inference=cfg.inference,
                          workers=cfg.workers, cache_dir=cfg.cache_dir),
                      progress=cfg.progress, analyze=cfg.analyze, coco=cfg.coco,
                      images=cfg.images)  # fmt: skip
    ablation = AblationConfig(test, paper.out, "svm", cfg.svm, str(run / "bbox"), True)
    evaluate = {"model": str(run / "best.pt"), "data": regions.out, "split": "val",
                "inference": shared_settings(cfg.inference)}  # fmt: skip

    def evaluated() -> dict | None:
        m = run_evaluate(str(run / "best.pt"), regions.out, "val", str(out / "evaluate"),
                         inference=cfg.inference, progress=cfg.progress)  # fmt: skip
        return None if m is None else {"balanced_accuracy": m["balanced_accuracy"],
                                       "report": m["report"]}  # fmt: skip

    def prepared(config: PrepareConfig):
        def work() -> dict | None:
            from rcnn.data.prepare import run_prepare

            made = run_prepare(config)
            return None if made is None else {"splits": made["splits"]}

        return work

    def trained() -> dict | None:
        resume = (run / "last.pt").is_file()
        # Without last.pt the run folder holds at most what a run killed before its first
        # epoch wrote (initial.pt, config.json): the stage's own files, started again.
        row = run_train(train, resume=resume, overwrite=not resume)
        return None if row is None else {"best": row, "resumed": resume}

    def ablated() -> dict | None:
        found = run_ablation(ablation)
        return None if found is None else {"table": found["table"]}

    dataset_settings = dataset.settings()
    return [
        Step("regions", "regions for fine-tuning (rcnn prepare)", [out / "regions"],
             {"prepare": shared_settings(regions), "dataset": dataset_settings}, prepared(regions),
             inputs=files(cfg.train_split, cfg.val_split)),
        Step("regions-svm", "regions for the SVMs and box regressors (rcnn prepare --preset "
             "paper)", [out / "regions-svm"], {"prepare": shared_settings(paper),
             "dataset": dataset_settings}, prepared(paper), inputs=files(svm_split)),
        Step("train", "fine-tuning (rcnn train)",
             [*(run / name for name in RUN_FILES), run / "tensorboard"],
             shared_settings(train), trained,
             after=["regions"], required=[run / "best.pt", run / "model.pth"]),
        Step("evaluate", "the best checkpoint on every val region (rcnn evaluate)",
             [out / "evaluate"], evaluate, evaluated,
             after=["train"]),
        Step("ablation", "SVMs, box regression and detection by every scorer (rcnn ablate)",
             [out / "ablation", run / "svm", run / "bbox"], shared_settings(ablation), ablated,
             after=["train", "regions-svm"], inputs=files(cfg.test_split),
             required=[out / "ablation" / "ablation.json", run / "svm", run / "bbox"]),
    ]  # fmt: skip


def run_pipeline(cfg: PipelineConfig) -> dict | None:
    """Every stage that is not up to date, then ``OUT/report.md``; returns ``{"report":
    path, "stages": {name: record}, "ran": [names]}`` (``None`` on torchrun's other ranks)."""
    from rcnn.pipeline.report import write_report
    from rcnn.runtime.distributed import barrier, broadcast, rank_zero_first
    from rcnn.runtime.stage import run_stage

    out = Path(cfg.out)
    start = time.perf_counter()
    cfg = resolved(cfg)
    with run_stage("rcnn pipeline", cfg.inference.device, cfg) as frame:
        world = frame.world
        frame.claim(out)
        source = f"--coco {cfg.coco}" if cfg.coco else f"--voc-root {cfg.voc_root}"
        dataset = frame.everywhere(lambda: open_dataset(cfg.voc_root, cfg.coco, cfg.images),
                                   source)  # fmt: skip
        svm_split = broadcast(svm_split_of(cfg, dataset))
        steps = frame.everywhere(lambda: steps_of(cfg, dataset, svm_split), source)
        records, keys, ran = Records(out), {}, []
        for number, step in enumerate(steps, 1):
            key = digest({"settings": step.settings, "inputs": step.inputs,
                          "after": {name: keys[name] for name in step.after}})  # fmt: skip
            keys[step.name] = key
            chosen: list[str] = []

            def decide(step=step, key=key, chosen=chosen) -> None:
                chosen.append(plan(records, step, key))
                if chosen[0] in ("run", "continue"):
                    records.write(
                        step.name,
                        {
                            "key": key,
                            "state": "started",
                            "title": step.title,
                            "settings": step.settings,
                        },
                    )

            rank_zero_first(world, decide)
            action = broadcast(chosen[0] if chosen else None)
            label = f"[{number}/{len(steps)}] {step.name}"
            say = logger.info if world.is_main else logger.debug
            if action in ("skip", "restore"):
                say("%s: up to date%s", label, " (restored)" if action == "restore" else "")
                continue
            say("%s: %s%s", label, step.title, " (continuing)" if action == "continue"
                        else "")  # fmt: skip
            begun = time.perf_counter()
            with PeakMemory() as peak:
                summary = step.run()
            if world.is_main:
                seconds = time.perf_counter() - begun
                records.write(step.name, done_record(key, step, seconds, peak, summary))
            ran.append(step.name)
            barrier()
        if not world.is_main:
            return None
        stages = {step.name: records.read(step.name) for step in steps}
        report = write_report(cfg, out, stages, time.perf_counter() - start)
        return {"report": str(report), "stages": stages, "ran": ran, "out": str(out)}
