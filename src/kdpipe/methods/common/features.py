"""Intermediate features through forward hooks (torchvision's model code stays untouched).

Layer names are module paths from ``model.named_modules()`` (``layer2``, ``features.6``, ...).
Defaults per architecture pick comparable stages of the network, so methods work for every
registered model without settings; ``distill.<method>.student_layers`` / ``teacher_layers``
override them.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from kdpipe.errors import ConfigError
from kdpipe.models import MODELS
from kdpipe.models.registry import vgg_pool_layers

# Four stages from early to late, for each torchvision family (small-input and
# ImageNet stems alike). The project's other architectures declare theirs on their registry
# ``Spec`` (``feature_layers``), which comes first: ``resnet20`` is no torchvision ResNet.
STAGES = {
    "resnet": ["layer1", "layer2", "layer3", "layer4"],
    "mobilenet_v2": ["features.3", "features.6", "features.13", "features.18"],
}


def default_stages(arch: str) -> list[str]:
    if arch in MODELS and MODELS[arch].feature_layers is not None:
        return list(MODELS[arch].feature_layers)
    if arch.startswith("vgg") and arch.endswith("_bn"):  # torchvision's VGGs: the first four max-
        return vgg_pool_layers(arch)[:4]  # pools (the outputs of four conv blocks)
    for family, layers in STAGES.items():
        if arch.startswith(family):
            return list(layers)
    raise ConfigError(f"no default feature layers for '{arch}'; set the method's student_layers/teacher_layers")


def resolve(model: nn.Module, names: list[str], where: str) -> list[nn.Module]:
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ConfigError(f"{where}: the model has no layer '{name}'{hint}")
        found.append(modules[name])
    return found


def penultimate(model: nn.Module) -> nn.Linear:
    """The last Linear layer: its input is the pooled embedding the classifier sees."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("the model has no final Linear layer to take an embedding from")
    return linears[-1]


class FeatureTap:
    """Keeps the outputs of named layers (and the classifier's input) from the last forward."""

    def __init__(self, model: nn.Module, layers: list[str], where: str, embedding: bool = False):
        self.layers = layers
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, module in zip(layers, resolve(model, layers, where)):
            self.handles.append(module.register_forward_hook(self._keep(name)))
        if embedding:
            self.handles.append(penultimate(model).register_forward_pre_hook(self._keep_input("embedding")))

    def _keep(self, name):
        def hook(_module, _inputs, output):
            self.outputs[name] = output

        return hook

    def _keep_input(self, name):
        def hook(_module, inputs):
            self.outputs[name] = inputs[0]

        return hook

    def features(self) -> list[torch.Tensor]:
        return [self.outputs[name] for name in self.layers]

    def embedding(self) -> torch.Tensor:
        return self.outputs["embedding"]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.outputs.clear()


@torch.no_grad()
def probe_shapes(model: nn.Module, tap: FeatureTap, input_shape: tuple[int, int, int]) -> list[torch.Size]:
    """Shapes of the tapped features for one input, found with a dummy forward pass in eval mode."""
    was_training = model.training
    model.eval()
    model(torch.zeros(2, *input_shape))
    model.train(was_training)
    return [f.shape[1:] for f in tap.features()]


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two feature maps down to the smaller one's height and width."""
    if a.shape[2:] == b.shape[2:]:
        return a, b
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    return nn.functional.adaptive_avg_pool2d(a, size), nn.functional.adaptive_avg_pool2d(b, size)


def regressor(in_channels: int, out_channels: int, kernel: int = 1, batch_norm: bool = True) -> nn.Module:
    """FitNets' regressor: a ``kernel`` x ``kernel`` convolution (and batch norm) from the student's
    channels to the teacher's."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=not batch_norm)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if batch_norm else nn.Sequential(conv)


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    s, t = match_spatial(student_feat.float(), teacher_feat.float())
    return nn.functional.mse_loss(s, t)
