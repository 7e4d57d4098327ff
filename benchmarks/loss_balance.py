"""How hard a method's loss terms pull on a fresh student, against the labels' cross-entropy.

    python benchmarks/loss_balance.py experiments/cifar10_cpu fastnet_fastnet_s at [--batch 128] [--seed 0]

For a benchmark experiment (its params.yaml, its prepared data and the pair's trained teacher,
``models/teacher_<pair>.pt``: run it after the experiment's teacher stage), builds the pair's
student as a cell's training does (the same seed and data initialisation) and the method with the experiment's
``distill`` settings (at its first epoch's progress, for methods with ramps), runs one batch of
the first ``--batch`` training images (no augmentation, fp32), and prints: the cross-entropy with the labels (the loss of ``none``), each term the method
reports, and the norms of the gradients on the student's trainable weights of (a) that
cross-entropy and (b) the rest of the method's loss (its loss minus the cross-entropy: the
weighted feature term of a feature method; for ``kd``, alpha x (T^2 KL - CE)), their ratio, and
the weights the rest pulls on hardest. A ratio in the hundreds means the method's weight swamps
the labels (``at``'s beta = 1000 on fastnet_s: experiments/cifar10_cpu/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from kdpipe import paths  # noqa: E402
from kdpipe.benchmark import pair_params, teacher_name  # noqa: E402
from kdpipe.config import load_params  # noqa: E402
from kdpipe.data.batches import BatchTransform  # noqa: E402
from kdpipe.data.prepared import load_prepared  # noqa: E402
from kdpipe.methods import Batch, MethodContext, build_method, link_with  # noqa: E402
from kdpipe.models.checkpoint import load_checkpoint  # noqa: E402
from kdpipe.models.registry import build_model, init_from_data  # noqa: E402
from kdpipe.training import DATA_INIT_IMAGES, ROLE_SEED_OFFSET  # noqa: E402


def grad_norm(loss: torch.Tensor, weights: list[torch.nn.Parameter]) -> tuple[float, list[torch.Tensor | None]]:
    grads = torch.autograd.grad(loss, weights, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))), list(grads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path, help="a benchmark experiment's folder (experiments/<name>)")
    parser.add_argument("pair", help="one of its benchmark.pairs")
    parser.add_argument("method", help="a distillation method (its settings: the experiment's distill.<method>)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42, help="the cell's seed (the student's initialisation)")
    parser.add_argument("--top", type=int, default=4, help="how many of the hardest-pulled weights to list")
    args = parser.parse_args()
    os.chdir(args.experiment)  # the experiment's relative paths (params.yaml, data/prepared, models/)
    params = pair_params(load_params(), args.pair)
    link = link_with(params.distill, args.method)
    teacher, info = load_checkpoint(paths.checkpoint_path(teacher_name(args.pair)))
    data = load_prepared(paths.PREPARED_DIR)
    meta, arch = data.meta, params.student.arch
    transform = BatchTransform(meta, torch.device("cpu"), channels_last=False)
    size = max(meta.height, meta.width)
    torch.manual_seed(args.seed + ROLE_SEED_OFFSET["student"])  # as setup_runtime seeds a cell's student
    student = build_model(arch, meta.num_classes, meta.channels, size)
    init_from_data(arch, student, transform(data["train"].images[:DATA_INIT_IMAGES]))
    context = MethodContext(input_shape=meta.image_shape, student_arch=arch, teacher_arch=info.arch,
                            num_train=len(data["train"]),
                            build_network=lambda name: build_model(name, meta.num_classes, meta.channels, size))
    method = build_method(args.method, student, teacher, link, params.student.label_smoothing, context).train()
    method.set_progress(1, params.student.epochs)
    batch = Batch(transform(data["train"].images[: args.batch]), data["train"].labels[: args.batch],
                  torch.arange(args.batch))
    logits, loss, terms = method(batch)
    ce = F.cross_entropy(logits, batch.labels, label_smoothing=params.student.label_smoothing)
    weights = [p for p in student.parameters() if p.requires_grad]
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    ce_norm, _ = grad_norm(ce, weights)
    rest_norm, rest = grad_norm(loss - ce, weights)
    print(f"{args.pair} {args.method}: teacher {info.arch}, student {arch}, batch {args.batch}")
    shown = {"loss": loss, "ce (labels)": ce, **terms}
    print("  terms: " + ", ".join(f"{k} {float(torch.as_tensor(v).detach()):.4g}" for k, v in shown.items()))
    print(f"  |grad ce| {ce_norm:.4g}   |grad (loss - ce)| {rest_norm:.4g}   ratio {rest_norm / ce_norm:.3g}x")
    hardest = sorted((g.norm().item(), n) for n, g in zip(names, rest) if g is not None)[::-1][: args.top]
    print("  pulled hardest by (loss - ce): " + ", ".join(f"{n} {v:.4g}" for v, n in hardest))
    method.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
