"""Names of the network's feature taps (:mod:`rcnn.modeling.features`), kept free of torch so
that the command line can list them without importing it."""

LAYERS = ("pool5", "fc6", "fc7")
