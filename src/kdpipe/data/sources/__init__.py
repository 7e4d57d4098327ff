"""Registry of data sources by ``data.dataset`` name.

A source returns raw uint8 images (N, C, H, W) with integer labels; it may provide its own
test (and validation) split, otherwise prepare carves them out with a seeded stratified split.
Each source lives in a module of this package (the table says which) and registers itself when
prepare first asks for it; validating ``data.dataset`` reads only the table.
"""

from kdpipe.registry import Registry

SOURCE_MODULES = {
    "digits": "digits",
    "imagefolder": "imagefolder",
    "medmnist": "medmnist",
    "cifar10": "torchvision_sets",
    "cifar100": "torchvision_sets",
    "mnist": "torchvision_sets",
    "fashion_mnist": "torchvision_sets",
}
SOURCES = Registry("data set", __name__, modules=SOURCE_MODULES)
