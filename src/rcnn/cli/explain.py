"""``rcnn explain``: one image's trip through the detector, drawn stage by stage."""

from __future__ import annotations

from rcnn.cli.common import add_model, parser
from rcnn.cli.detect import _detector_config, add_detect_flags


def add_explain(sub) -> None:
    p = parser(
        sub,
        "explain",
        "draw one image's trip through the detector, stage by stage",
        "One figure (OUT/explain.png) and its numbers (OUT/explain.md; the detections in "
        "OUT/explain.json) of every stage of the detector on one image: (a) the Selective "
        "Search proposals, and with --annotation the objects' recall at IoU 0.5 and 0.7 and "
        "each object's best proposal; (b) the proposals labelled object, background or left "
        "out by the rules of the run's regions (`rcnn prepare`'s); (c) regions warped as the "
        "network sees them, context padding marked; (d) the best-scored proposals of each "
        "class before NMS and the spread of the scores; (e) what NMS keeps, exactly the "
        "detections of `rcnn detect` with the same flags; (f) each kept box before and after "
        "box regression (--bbox-reg), with its IoU gain. OUT is written whole at the end; an "
        "existing OUT is replaced only with --overwrite.",
    )
    add_model(p)
    p.add_argument("image", metavar="IMAGE", help="the image file")
    p.add_argument(
        "--annotation",
        metavar="XML",
        help="the image's VOC annotation: recall, labels and the IoU gain of box regression",
    )
    p.add_argument("--out", required=True, help="folder for explain.png, explain.md, explain.json")
    p.add_argument(
        "--no-exif",
        action="store_true",
        help="read the image's pixels as stored, not turned upright by its EXIF orientation "
        "(an --annotation's boxes are of the stored pixels: the image is then read as stored)",
    )
    add_detect_flags(p)


def cmd_explain(args) -> None:
    from rcnn.detection.explain_report import run_explain

    found = run_explain(
        args.model,
        args.image,
        args.out,
        _detector_config(args),
        args.annotation,
        args.overwrite,
        args.classes,
        exif=not args.no_exif,
    )
    print(
        f"{found['proposals']} proposals, {found['candidates']} above the threshold, "
        f"{found['detections']} kept by NMS; explain.png and explain.md in {found['out']}"
    )
