"""ImageNet-pretrained backbones from the torch hub cache, offline."""

import pytest
import torch
import torchvision.models._api as tv_api

from kdpipe.errors import ConfigError
from kdpipe.models.registry import MODELS, build_model, hub_file


@pytest.fixture
def hub(tmp_path, monkeypatch):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))

    def offline(url, *args, **kwargs):
        raise OSError(f"no network for {url}")

    # a cache miss must not reach the network in tests
    def cached_only(url, *args, **kwargs):
        path = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
        return torch.load(path) if path.is_file() else offline(url)

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", cached_only)
    yield tmp_path
    torch.hub.set_dir(previous)


def test_missing_weights_name_the_file(hub):
    expected = hub_file(MODELS["resnet18"].weights)
    with pytest.raises(ConfigError, match=f"{expected}.*missing"):
        build_model("resnet18", 10, 3, 32, pretrained=True)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_cached_weights_load_and_adapt(hub, arch):
    spec = MODELS[arch]
    reference = spec.factory(weights=None)  # stands in for the ImageNet file
    path = hub_file(spec.weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), path)

    model = build_model(arch, 5, 1, 32, pretrained=True).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    first = model.conv1 if arch.startswith("resnet") else model.features[0][0]
    ref_first = reference.conv1 if arch.startswith("resnet") else reference.features[0][0]
    # gray input: the stem is the sum of the RGB filters, so gray x in all channels == 1-channel x
    assert torch.allclose(first.weight, ref_first.weight.sum(dim=1, keepdim=True))
    # the rest of the network is the ImageNet one
    name, param = next((n, p) for n, p in model.named_parameters() if "layer1" in n or "features.1" in n)
    assert torch.equal(param, dict(reference.named_parameters())[name])
    # rebuilding the structure for a checkpoint reads no weights
    skeleton = build_model(arch, 5, 1, 32, pretrained=True, load_weights=False)
    skeleton.load_state_dict(model.state_dict())
