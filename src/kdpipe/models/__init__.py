"""Models: the architecture registry (names listed here, built by ``models/registry.py``) and
checkpoints. Validating ``<role>.arch`` reads only this table, not the model code."""

from kdpipe.registry import Registry

ARCHITECTURES = {
    "resnet18": "registry",
    "resnet34": "registry",
    "resnet50": "registry",
    "mobilenet_v2": "registry",
    "vgg11_bn": "registry",
    "vgg16_bn": "registry",
    "fastnet": "fastnet",
    "fastnet_s": "fastnet",
    "fastnet_l": "fastnet",
}
MODELS = Registry("architecture", __name__, modules=ARCHITECTURES)
