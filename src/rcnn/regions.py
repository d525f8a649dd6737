"""The region store, also importable as ``rcnn.regions``: it lives in :mod:`rcnn.data.regions`."""

from rcnn.data.regions import RegionSet, RegionStoreError

__all__ = ["RegionSet", "RegionStoreError"]
