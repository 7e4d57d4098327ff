"""Models: the architecture registry (names listed here, built by ``models/registry.py``) and
checkpoints. Validating ``<role>.arch`` reads only this table, not the model code; a
``timm:<name>`` architecture imports timm (``models/timm_models.py``) to check the name."""

from kdpipe.registry import Registry

ARCHITECTURES = {
    "resnet18": "registry",
    "resnet34": "registry",
    "resnet50": "registry",
    "resnet101": "registry",
    "resnet152": "registry",
    "mobilenet_v2": "registry",
    "vgg11_bn": "registry",
    "vgg16_bn": "registry",
    "fastnet": "fastnet",
    "fastnet_s": "fastnet",
    "fastnet_l": "fastnet",
    "airbench94": "fastnet",
    # the CIFAR knowledge-distillation benchmarks (CRD, RepDistiller, mdistiller)
    "resnet8": "cifar_resnet",
    "resnet14": "cifar_resnet",
    "resnet20": "cifar_resnet",
    "resnet32": "cifar_resnet",
    "resnet44": "cifar_resnet",
    "resnet56": "cifar_resnet",
    "resnet110": "cifar_resnet",
    "resnet8x4": "cifar_resnet",
    "resnet32x4": "cifar_resnet",
    "wrn_16_1": "wrn",
    "wrn_16_2": "wrn",
    "wrn_40_1": "wrn",
    "wrn_40_2": "wrn",
    "vgg8": "cifar_vgg",
    "vgg11": "cifar_vgg",
    "vgg13": "cifar_vgg",
    "vgg16": "cifar_vgg",
    "vgg19": "cifar_vgg",
    "shufflenet_v1": "shufflenet",
    "shufflenet_v2": "shufflenet",
    "mobilenet_v2_half": "mobilenet_half",
    "deepnn": "tutorial_cnn",
    "lightnn": "tutorial_cnn",
    # a whole-model file (<role>.checkpoint) is the network: imported, never trained, logits only
    "onnx": "file_model",
    "torchscript": "file_model",
}
MODEL_FILE_ARCHS = ("onnx", "torchscript")
TIMM_PREFIX = "timm:"  # timm:<model name>, any of timm.list_models()
MODELS = Registry("architecture", __name__, modules=ARCHITECTURES, prefixes={TIMM_PREFIX: "timm_models"})
