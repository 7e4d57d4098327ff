"""Quantization-aware distillation: fine-tune the student under simulated int8, its teacher
still teaching through the KD loss, then hand it to ONNX Runtime's int8 quantizer.

The simulation follows the scheme ``quantize_static`` applies to the exported graph, so what the
student adapts to is what ships: BatchNorms are folded into the convolutions first (torch.fx's
``fuse``; ONNX Runtime folds them too before quantizing), weights are fake-quantized per output
channel as symmetric int8 (7-bit range), and activations (the network input, every ReLU and residual-add
output) per tensor as asymmetric uint8, with torch.ao's ``FakeQuantize`` and observers. After
fine-tuning, weights are snapped onto their int8 grid and the activation fakes are dropped: the
fp32 model that remains quantizes with no weight rounding left to lose.
"""

from __future__ import annotations

import logging
import operator

import torch
from torch import fx, nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
from torch.fx.experimental.optimization import fuse
from torch.nn.utils import parametrize

from kdpipe import paths
from kdpipe.config import Params, RoleConfig
from kdpipe.data.prepared import PreparedData
from kdpipe.engine.runtime import setup_runtime, teacher_chunk
from kdpipe.engine.trainer import FitResult, fit
from kdpipe.methods import MethodContext, build_method
from kdpipe.models.checkpoint import load_checkpoint

log = logging.getLogger("kdpipe")
ACTIVATIONS = (nn.ReLU, nn.ReLU6)
ADDS = {operator.add, operator.iadd, torch.add}
SEED_OFFSET = 3000  # keeps the fine-tune's shuffling apart from the student's own training


# ONNX Runtime's reduced ("7-bit") symmetric int8 weight range, which kdpipe.quantize uses (see
# REDUCE_RANGE there for why): scale = max|w| / 64 in both, so the snapped weights are exactly
# representable when ONNX Runtime quantizes them again.
WEIGHT_QMIN, WEIGHT_QMAX = -64, 64


def weight_fake_quant() -> FakeQuantize:
    # averaging_constant=1: the range follows the current weights, not a history of them.
    return FakeQuantize(
        observer=MovingAveragePerChannelMinMaxObserver, averaging_constant=1.0, quant_min=WEIGHT_QMIN,
        quant_max=WEIGHT_QMAX,
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0,
    )


class ActivationFakeQuant(nn.Module):
    """Per-tensor uint8 fake quantization whose range is observed in training mode only,
    so validation batches never move it."""

    def __init__(self):
        super().__init__()
        self.fake_quant = FakeQuantize(
            observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
            qscheme=torch.per_tensor_affine,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fake_quant.enable_observer(self.training)
        return self.fake_quant(x)


def _quantized_activation(node: fx.Node, model: fx.GraphModule) -> bool:
    if node.op == "placeholder":
        return True
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), ACTIVATIONS)
    return node.op == "call_function" and node.target in ADDS


def prepare_qat(model: nn.Module) -> fx.GraphModule:
    """A copy of ``model`` with BatchNorm folded and int8 simulated (weights and activations)."""
    fused = fuse(model.eval())
    for module in fused.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(module, "weight", weight_fake_quant())
    graph = fused.graph
    for index, node in enumerate([n for n in graph.nodes if _quantized_activation(n, fused)]):
        name = f"act_fake_quant_{index}"
        fused.add_submodule(name, ActivationFakeQuant())
        with graph.inserting_after(node):
            quantized = graph.call_module(name, (node,))
        node.replace_all_uses_with(quantized, delete_user_cb=lambda user, q=quantized: user is not q)
    graph.lint()
    fused.recompile()
    return fused


def finalize_qat(model: fx.GraphModule) -> fx.GraphModule:
    """Plain fp32 model for export: weights snapped onto their int8 grid, activation fakes removed
    (ONNX Runtime calibrates the activation ranges of the exported graph)."""
    model.eval()
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    for name, child in list(model.named_children()):
        if isinstance(child, ActivationFakeQuant):
            setattr(model, name, nn.Identity())
    model.recompile()
    return model


def qat_recipe(params: Params) -> RoleConfig:
    """The fine-tune's optimiser: the student's, with ``quantize.qat``'s epochs, lr and decay on a
    cosine schedule. A run-from-scratch recipe's Lookahead and BN-shift learning-rate multiple stay
    off: BatchNorm is folded here, and averaging would also reach the fake-quant observers' ranges
    (which start at +-inf, so the average turned them to NaN)."""
    cfg = params.quantize.qat
    return params.student.model_copy(update={
        "epochs": cfg.epochs, "lr": cfg.lr, "scheduler": "cosine", "weight_decay": cfg.weight_decay,
        "lookahead_every": 0, "norm_bias_lr_scale": 1.0,
    })


def qat_distill(params: Params, student: nn.Module, data: PreparedData) -> tuple[fx.GraphModule, FitResult]:
    """Fine-tune ``student`` under simulated int8 with KD from the student link's teacher (in fp32:
    fake quantization is an fp32 simulation)."""
    cfg = params.quantize.qat
    teacher_role = params.distill.teacher
    teacher, teacher_info = load_checkpoint(paths.checkpoint_path(teacher_role), paths.STAGE_OF_ROLE[teacher_role])
    runtime = setup_runtime(params.train.model_copy(update={"precision": "fp32"}), params.seed + SEED_OFFSET,
                            params.student.arch, teacher_info.arch)
    model = prepare_qat(student)
    link = params.distill.model_copy(update={"method": "kd"})
    context = MethodContext(where="distill", input_shape=data.meta.image_shape, teacher_arch=teacher_info.arch,
                            teacher_chunk=teacher_chunk(params.train, runtime.device))
    method = build_method("kd", model, teacher, link, params.student.label_smoothing, context)
    recipe = qat_recipe(params)
    log.info("QAT: %d epochs of KD from the %s (T=%g, alpha=%g), lr %g, %s",
             cfg.epochs, teacher_role, link.temperature, link.alpha, cfg.lr, runtime.describe())
    try:
        result = fit(method, recipe, params.train, data, runtime, params.seed + SEED_OFFSET, desc="qat")
    finally:
        method.close()
    return finalize_qat(model), result
