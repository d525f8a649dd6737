"""Metrics, figures and `rcnn evaluate` / `rcnn compare`."""
