import torch

from kdpipe.config import RoleConfig, TrainConfig
from kdpipe.data.prepared import PreparedData, PreparedMeta, Split
from kdpipe.engine.runtime import Runtime, resolve_precision, setup_runtime
from kdpipe.engine.trainer import fit
from kdpipe.methods import build_method
from kdpipe.models.registry import build_model


def toy_data(n=96, seed=0):
    """Two classes that differ in brightness: learnable in one epoch."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (torch.rand(n, 1, 8, 8, generator=g) * 100 + y[:, None, None, None] * 120).to(torch.uint8)
    meta = PreparedMeta("toy", ["dark", "bright"], 1, 8, 8, [0.4], [0.25], {"train": n, "val": n, "test": n})
    split = Split(x, y)
    return PreparedData(meta, {"train": split, "val": split, "test": split})


def train_once(precision="fp32"):
    cfg = TrainConfig(batch_size=32, device="cpu", precision=precision)
    runtime = setup_runtime(cfg, seed=5)
    model = build_model("resnet18", 2, 1, 8)
    role = RoleConfig(arch="resnet18", epochs=2, lr=0.05)
    result = fit(build_method("none", model), role, cfg, toy_data(), runtime, seed=5)
    return model, result


def test_training_learns_and_is_deterministic():
    a, ra = train_once()
    b, rb = train_once()
    assert ra.best_val_accuracy >= 0.9
    assert ra.best_val_accuracy == rb.best_val_accuracy
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert len(ra.history) == 2 and {"train/loss", "val/acc", "lr", "epoch_seconds"} <= set(ra.history[0])
    assert not a.training  # handed back in eval mode, on the CPU


def test_precision_auto_resolution():
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in {"bf16", "fp32"}
    assert Runtime(torch.device("cpu"), "bf16").dtype == torch.bfloat16
