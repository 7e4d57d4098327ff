"""The two CNNs of PyTorch's knowledge-distillation tutorial (Alexandros Chariton, "Knowledge
Distillation Tutorial", pytorch.org/tutorials/beginner/knowledge_distillation_tutorial.html):
the teacher ``deepnn`` and the student ``lightnn``. At 3x32x32 and 10 classes they have the
tutorial's 1,186,986 and 267,738 parameters.

Both halve the map twice with 2x2 max-pools, flatten it and classify with two Linear layers (ReLU
and 10% dropout between). The first Linear's input is the flattened map: channels x (H/4) x (W/4)
(2048 and 1024 at 32 px, as in the tutorial; 128 and 64 for 8-px digits).
"""

from __future__ import annotations

import torch
from torch import nn

from kdpipe.models import MODELS
from kdpipe.models.registry import Spec

# deepnn: the outputs of its four convolutions (after ReLU); lightnn has two convolutions, so
# each is tapped before and after its max-pool
DEEP_LAYERS = ["features.1", "features.3", "features.6", "features.8"]
LIGHT_LAYERS = ["features.1", "features.2", "features.4", "features.5"]


class TutorialCNN(nn.Module):
    def __init__(self, features: nn.Sequential, channels: int, hidden: int, num_classes: int, image_size: int):
        super().__init__()
        self.features = features
        side = image_size // 2 // 2
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def deepnn(num_classes: int, in_channels: int, image_size: int) -> TutorialCNN:
    features = nn.Sequential(
        nn.Conv2d(in_channels, 128, 3, padding=1), nn.ReLU(),
        nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, 2),
    )
    return TutorialCNN(features, 32, 512, num_classes, image_size)


def lightnn(num_classes: int, in_channels: int, image_size: int) -> TutorialCNN:
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, 2),
    )
    return TutorialCNN(features, 16, 256, num_classes, image_size)


MODELS.add("deepnn", Spec(deepnn, feature_layers=DEEP_LAYERS))
MODELS.add("lightnn", Spec(lightnn, feature_layers=LIGHT_LAYERS))
