"""Detection: the detector, `rcnn detect`, and `rcnn test` (VOC evaluation)."""
