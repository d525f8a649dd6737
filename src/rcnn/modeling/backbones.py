"""Backbones of this project's own, beside torchvision's classifiers.

``alexnet_tiny`` has AlexNet's shape (convolutions, then ``avgpool``, then a classifier of
dropout, fc6, ReLU, dropout, fc7, ReLU and the head, at the same indices) at about a
six-hundredth of its size: every tap (pool5, fc6, fc7), every stage and every file of the
pipeline works with it as with AlexNet, in milliseconds a batch on a CPU. It has no
pretrained weights; it is meant for tests and for trying the pipeline quickly.
"""

from __future__ import annotations

from torch import nn

# ImageNet's mean and std (torchvision's weights metadata gives the same for AlexNet).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TinyAlexNet(nn.Module):
    """AlexNet's layout with 16-32 channels and 128-wide fully connected layers (~0.1M
    parameters with 1,000 outputs); pool5 is 32 x 3 x 3 = 288 values, fc6 and fc7 128."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=5, stride=2, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(32 * 3 * 3, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(128, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


OWN = {"alexnet_tiny": TinyAlexNet}  # name -> class: no pretrained weights
