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


def test_selection_keeps_the_best_validation_epoch_by_accuracy_then_loss():
    from kdpipe.engine.trainer import Selection

    net = torch.nn.Linear(2, 2)
    sel = Selection()
    for epoch, acc, loss in [(1, 0.5, 1.0), (2, 0.7, 0.9), (3, 0.7, 0.8), (4, 0.7, 0.85), (5, 0.6, 0.1)]:
        with torch.no_grad():
            net.weight.fill_(epoch)
        sel.offer(epoch, acc, loss, net)
    assert (sel.epoch, sel.accuracy, sel.loss) == (3, 0.7, 0.8)
    assert torch.equal(sel.state["weight"], torch.full((2, 2), 3.0))  # a copy, not the live tensor


def test_step_loader_hands_the_method_what_it_declares():
    from kdpipe.config import AugmentConfig
    from kdpipe.data.batches import BatchTransform
    from kdpipe.engine.steps import StepLoader
    from kdpipe.engine.teacher_cache import TeacherCache

    data = toy_data(n=64)
    train = data["train"]
    transform = BatchTransform(data.meta, torch.device("cpu"), channels_last=False)
    gens = {"shuffle": torch.Generator().manual_seed(0), "augment": torch.Generator().manual_seed(1)}
    plain = StepLoader(train, transform, AugmentConfig(crop_padding=0), 16, slice(None), gens, torch.device("cpu"))
    batches = list(plain.epoch(1))
    assert len(batches) == plain.steps == 4
    assert all(b.indices is None and b.teacher_logits is None and b.images.shape == (16, 1, 8, 8) for b in batches)
    seen = torch.cat([b.labels for b in batches])
    assert sorted(seen.tolist()) == sorted(train.labels.tolist())  # every image once per epoch

    cache = TeacherCache(views=[train.images, train.images], logits=[torch.zeros(64, 2), torch.ones(64, 2)], seconds=0)
    cached = StepLoader(train, transform, AugmentConfig(), 16, slice(0, 8), gens, torch.device("cpu"), cache,
                        with_indices=True)
    batch = next(iter(cached.epoch(2)))  # epoch 2 reads the second view
    assert batch.indices.shape == (8,) and torch.equal(batch.teacher_logits, torch.ones(8, 2))
    assert torch.equal(batch.labels, train.labels[batch.indices])
