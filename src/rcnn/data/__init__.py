"""Data: the VOC reader, Selective Search proposals, labelling, the region store, and the
images, warps, feeders and sampler that turn regions into batches."""
