"""R-CNN (Girshick et al., 2014) on VOC- and COCO-format data: Selective Search proposals, a
fine-tuned CNN, SVMs and box regressors, detection and its evaluation.

    from rcnn import Detector
    det = Detector.load("OUT/run", scorer="svm", bbox_reg=True)
    result = det("street.jpg")

The names below are imported when first used: ``import rcnn`` imports neither torch nor
OpenCV.
"""

from rcnn.errors import RcnnError

__version__ = "0.1.0"
__all__ = ["Detector", "Result", "RcnnError", "evaluate_detections", "open_dataset"]

_API = {"Detector", "Result", "evaluate_detections", "open_dataset"}


def __getattr__(name: str):
    if name in _API:
        from rcnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'rcnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
