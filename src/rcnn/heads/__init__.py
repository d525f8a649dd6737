"""R-CNN's heads on a fine-tuned network's features: the feature store, features computed on
the fly, the SVMs with hard-negative mining, box regression, and their commands."""
