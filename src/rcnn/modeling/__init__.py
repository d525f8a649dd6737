"""The region classifier: torchvision backbones with a new head."""
