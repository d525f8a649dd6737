"""``rcnn pipeline``: every stage of R-CNN on a dataset, resumable, with one report."""
