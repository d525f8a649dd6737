"""R-CNN fine-tuning: VOC data -> Selective Search regions -> a fine-tuned region classifier."""

__version__ = "0.1.0"
