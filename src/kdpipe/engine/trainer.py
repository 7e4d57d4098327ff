"""The training loop shared by every role, in small pieces: placement (``place``), DDP
(``distribute``), one epoch (``train_epoch``), validation (``validate``), best-on-validation
selection (``Selection``, never test), the resumable state (``TrainState``) and ``fit``, which
strings them together with per-epoch logging and checkpoints."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kdpipe.config import RoleConfig, TrainConfig
from kdpipe.data.batches import BatchTransform, num_batches
from kdpipe.data.prepared import PreparedData, Split
from kdpipe.engine.compile import compiled
from kdpipe.engine.inference import predict_logits
from kdpipe.engine.lookahead import Lookahead
from kdpipe.engine.optim import build_optimizer, build_scheduler
from kdpipe.engine.resume import EpochCheckpoints, rng_state, set_rng_state
from kdpipe.engine.runtime import Runtime
from kdpipe.engine.small_conv import small_convs_as_gemm
from kdpipe.engine.steps import StepLoader
from kdpipe.engine.teacher_cache import build_teacher_cache
from kdpipe.errors import KdpipeError
from kdpipe.methods.common.base import Method

log = logging.getLogger("kdpipe")


class EpochLogger(Protocol):
    def log_epoch(self, epoch: int, values: dict[str, float]) -> None: ...


@dataclass
class FitResult:
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    last_val_accuracy: float
    epochs: int
    train_seconds: float
    images_per_second: float
    history: list[dict[str, float]] = field(default_factory=list)
    last_state: dict[str, torch.Tensor] | None = None  # weights after the last epoch (CPU)
    teacher_cache_seconds: float = 0.0  # building the cached teacher outputs, before train_seconds


class NonFiniteLossError(KdpipeError):
    pass


class NonFiniteWatch:
    """Remembers, on the device (no host sync per step), the first step of an epoch whose loss is
    not finite and the loss terms at that step."""

    def __init__(self, device: torch.device):
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.terms: torch.Tensor | None = None
        self.names: list[str] = []

    def update(self, step: int, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        first = (self.step < 0) & ~torch.isfinite(loss.detach())
        self.step = torch.where(first, step, self.step)
        values = torch.stack([loss.detach().float(), *(torch.as_tensor(v).detach().float() for v in terms.values())])
        if self.terms is None:
            self.names, self.terms = ["loss", *terms], torch.zeros_like(values)
        self.terms = torch.where(first, values, self.terms)

    def check(self, desc: str, epoch: int, steps_per_epoch: int, distributed: bool = False) -> None:
        step = int(self.step)  # one sync per epoch
        if distributed:  # every rank stops together, or the others would wait for it forever
            anywhere = (self.step >= 0).to(torch.int32)
            torch.distributed.all_reduce(anywhere, op=torch.distributed.ReduceOp.MAX)
            if step < 0 and int(anywhere):
                raise NonFiniteLossError(f"{desc}: the loss is not finite on another DDP rank in epoch {epoch}")
        if step < 0:
            return
        assert self.terms is not None
        detail = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.names, self.terms.tolist()))
        raise NonFiniteLossError(
            f"{desc}: the loss is not finite at step {(epoch - 1) * steps_per_epoch + step + 1} "
            f"(epoch {epoch}, batch {step + 1}/{steps_per_epoch}): {detail}. Try a lower {desc}.lr, "
            "train.precision: fp32, a smaller distillation weight, or check the data for NaN/inf"
        )


@dataclass
class Selection:
    """Best-on-validation selection (never test): higher accuracy first, then lower loss."""

    accuracy: float = -1.0
    loss: float = math.inf
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = None  # the student's weights at ``epoch`` (CPU)

    def offer(self, epoch: int, accuracy: float, loss: float, student: torch.nn.Module) -> None:
        if (accuracy, -loss) > (self.accuracy, -self.loss):
            self.accuracy, self.loss, self.epoch = accuracy, loss, epoch
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in student.state_dict().items()})


@dataclass
class TrainState:
    """Everything that changes from epoch to epoch: saved after each, restored on resume."""

    parts: dict[str, Any]  # method, optimizer, scheduler, scaler (each with a state_dict)
    generators: dict[str, torch.Generator]  # shuffling (CPU indices) and augmentation (device)
    selection: Selection = field(default_factory=Selection)
    history: list[dict[str, float]] = field(default_factory=list)
    seen: int = 0  # training images processed, for images/s
    seconds: float = 0.0  # training time of the epochs before this process started

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def to_dict(self, device: torch.device, seconds: float) -> dict[str, Any]:
        sel = self.selection
        return {
            **{name: part.state_dict() for name, part in self.parts.items()}, "rng": rng_state(self.generators, device),
            "best": [sel.accuracy, sel.loss], "best_epoch": sel.epoch, "best_state": sel.state,
            "history": self.history, "seen": self.seen, "seconds": seconds,
        }

    def restore(self, saved: dict[str, Any], device: torch.device) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(saved[name])
        set_rng_state(saved["rng"], self.generators, device)
        (accuracy, loss), epoch = saved["best"], saved["best_epoch"]
        self.selection = Selection(accuracy, loss, epoch, saved["best_state"])
        self.history, self.seen, self.seconds = saved["history"], saved["seen"], saved["seconds"]


def place(method: Method, device: torch.device, channels_last: bool) -> None:
    """The method (student and its own parts) and its teacher on the device, in the memory format."""
    method.to(device)
    if method.teacher is not None:
        method.teacher.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
        if method.teacher is not None:
            method.teacher.to(memory_format=torch.channels_last)


@dataclass
class EpochTotals:
    loss: float
    accuracy: float
    terms: dict[str, float]
    images: int


def train_epoch(
    model: torch.nn.Module, method: Method, epoch: int, loader: StepLoader, optimizer: torch.optim.Optimizer,
    scheduler, scaler: torch.amp.GradScaler, runtime: Runtime, desc: str, epochs: int,
    lookahead: Lookahead | None = None,
) -> EpochTotals:
    """One pass over the training split; sums stay on the device (one host sync per epoch)."""
    device = runtime.device
    method.set_progress(epoch, epochs)
    method.train()
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    terms_sum: dict[str, torch.Tensor] = {}
    count = 0
    watch = NonFiniteWatch(device)
    bar = tqdm(
        loader.epoch(epoch), total=loader.steps, desc=f"{desc} {epoch}/{epochs}", leave=False,
        disable=None if runtime.is_main else True,  # quiet off a terminal and on other ranks
    )
    for step, batch in enumerate(bar):
        with runtime.autocast():
            logits, loss, terms = model(batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if lookahead is not None:
            lookahead.step()
        watch.update(step, loss, terms)
        n = len(batch.labels)
        count += n
        loss_sum += loss.detach() * n
        correct += (logits.argmax(1) == batch.labels).sum()
        for k, v in terms.items():
            terms_sum[k] = terms_sum.get(k, 0) + v * n
    sums = {"loss": loss_sum, "correct": correct}
    if runtime.distributed:  # epoch totals over all ranks: one collective per epoch
        sums, terms_sum, count = all_reduce_sums(sums, terms_sum, count, device)
    watch.check(desc, epoch, loader.steps, runtime.distributed)
    return EpochTotals(
        float(sums["loss"]) / count, float(sums["correct"]) / count,
        {k: float(v) / count for k, v in terms_sum.items()}, count,
    )


def validate(student: torch.nn.Module, val: Split, transform: BatchTransform, batch_size: int,
             autocast) -> tuple[float, float]:
    """(accuracy, cross-entropy) of ``student`` on the validation split."""
    logits = predict_logits(student, val, transform, batch_size, autocast)
    return float((logits.argmax(1) == val.labels).float().mean()), float(F.cross_entropy(logits, val.labels))


def score_only(student: torch.nn.Module, val: Split, transform: BatchTransform, batch_size: int, autocast,
               logger: EpochLogger | None) -> FitResult:
    """The result of zero epochs: the starting weights (epoch 0), scored on the validation split."""
    val_acc, val_loss = validate(student, val, transform, batch_size, autocast)
    values = {"val/loss": val_loss, "val/acc": val_acc}
    if logger is not None:
        logger.log_epoch(0, values)
    student.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return FitResult(
        best_epoch=0, best_val_accuracy=val_acc, best_val_loss=val_loss, last_val_accuracy=val_acc, epochs=0,
        train_seconds=0.0, images_per_second=0.0, history=[values],
        last_state={k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
    )


def fit(
    method: Method,
    role: RoleConfig,
    train_cfg: TrainConfig,
    data: PreparedData,
    runtime: Runtime,
    seed: int,
    logger: EpochLogger | None = None,
    desc: str = "train",
    checkpoints: EpochCheckpoints | None = None,
) -> FitResult:
    """Train ``method.student``; with ``checkpoints`` every epoch's state is saved and a
    previous run's state, when there is one, is resumed from."""
    device = runtime.device
    place(method, device, runtime.channels_last)
    transform = BatchTransform(data.meta, device, runtime.channels_last)
    train, val = data["train"], data["val"]
    if role.epochs == 0:  # an imported model (``<role>.checkpoint``): scored, not trained
        return score_only(method.student, val, transform, train_cfg.eval_batch_size, runtime.autocast, logger)
    batch_size = min(train_cfg.batch_size, len(train))
    steps = num_batches(len(train), batch_size, drop_last=True)
    model, shard = distribute(method, runtime, train_cfg, batch_size)
    optimizer = build_optimizer(method, role)
    scheduler = build_scheduler(optimizer, role, steps)
    # the student's own weights only: a method's state (CRD's memory banks) is no weight to average
    lookahead = Lookahead(method.student, role.lookahead_every, role.epochs * steps) if role.lookahead_every else None
    state = TrainState(
        parts={"method": method, "optimizer": optimizer, "scheduler": scheduler, "scaler": runtime.grad_scaler(),
               **({"lookahead": lookahead} if lookahead is not None else {})},
        generators={"shuffle": torch.Generator().manual_seed(seed),
                    "augment": torch.Generator(device=device).manual_seed(seed + 1)},
    )
    views = getattr(method.cfg, "cache_views", 0) if method.teacher is not None and method.logits_only else 0
    cache = None
    if views:
        cache = build_teacher_cache(method.teacher.network, train, transform, train_cfg.augment, views,
                                    state.generators["augment"], runtime.autocast, train_cfg.eval_batch_size)
    loader = StepLoader(train, transform, train_cfg.augment, batch_size, shard, state.generators, device,
                        cache, method.needs_indices)
    if checkpoints is not None:  # state from another device, precision, layout or process count is another run
        checkpoints = checkpoints.bound_to(runtime.device.type, runtime.precision, runtime.world_size,
                                           torch.get_num_threads(), runtime.channels_last, runtime.small_conv_gemm)
    saved = load_state(checkpoints, runtime)
    if saved is not None:
        state.restore(saved, device)
        for done, values in enumerate(state.history, 1):  # dvclive's files start again from step 0
            if logger is not None:
                logger.log_epoch(done, values)
    start = time.perf_counter()
    # small convs: the trained networks only (the teacher is outside the method's module tree)
    with (
        small_convs_as_gemm(method.modules(), device.type == "cpu" and runtime.small_conv_gemm),
        compiled(method, train_cfg.compile),
    ):
        for epoch in range(state.epochs_done + 1, role.epochs + 1):
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            totals = train_epoch(model, method, epoch, loader, optimizer, scheduler, state.parts["scaler"], runtime,
                                 desc, role.epochs, lookahead)
            if lookahead is not None and epoch == role.epochs:
                lookahead.finish()
            state.seen += totals.images
            val_acc, val_loss = validate(method.student, val, transform, train_cfg.eval_batch_size, runtime.autocast)
            values = {
                "train/loss": totals.loss,
                "train/acc": totals.accuracy,
                **{f"train/{k}": v for k, v in totals.terms.items()},
                "val/loss": val_loss,
                "val/acc": val_acc,
                "lr": lr,
                "epoch_seconds": time.perf_counter() - epoch_start,
            }
            if device.type == "cuda":
                values["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            state.history.append(values)
            if logger is not None:
                logger.log_epoch(epoch, values)
            log.info(
                "%s epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  (%.1fs)",
                desc, epoch, role.epochs, totals.loss, totals.accuracy, val_loss, val_acc, values["epoch_seconds"],
            )
            state.selection.offer(epoch, val_acc, val_loss, method.student)
            if checkpoints is not None and runtime.is_main and epoch < role.epochs:  # (after the last: the outputs)
                checkpoints.save(epoch, state.to_dict(device, state.seconds + time.perf_counter() - start))
    seconds = state.seconds + time.perf_counter() - start
    best = state.selection
    assert best.state is not None
    last_state = {k: v.detach().cpu().clone() for k, v in method.student.state_dict().items()}
    method.student.load_state_dict(best.state)
    method.student.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return FitResult(
        teacher_cache_seconds=cache.seconds if cache is not None else 0.0,
        best_epoch=best.epoch,
        best_val_accuracy=best.accuracy,
        best_val_loss=best.loss,
        last_val_accuracy=state.history[-1]["val/acc"],
        epochs=role.epochs,
        train_seconds=seconds,
        images_per_second=state.seen / seconds,
        history=state.history,
        last_state=last_state,
    )


def load_state(checkpoints: EpochCheckpoints | None, runtime: Runtime) -> dict[str, Any] | None:
    """The saved state to resume from. Under DDP rank 0 looks first (and clears what is unusable),
    then the other ranks read the same file."""
    if checkpoints is None:
        return None
    if runtime.distributed and not runtime.is_main:
        torch.distributed.barrier()
    state = checkpoints.latest()
    if runtime.distributed:
        if runtime.is_main:
            torch.distributed.barrier()
        epoch = state["epoch"] if state is not None else 0
        agreed = torch.tensor([epoch, -epoch], device=runtime.device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
        if int(agreed[0]) != -int(agreed[1]):  # e.g. a folder that is not shared between nodes
            raise KdpipeError(f"DDP ranks found different saved epochs in {checkpoints.dir} (rank {runtime.rank}: "
                              f"{epoch}); put it on a file system all nodes share, or delete it to start afresh")
    return state


def distribute(
    method: Method, runtime: Runtime, train_cfg: TrainConfig, batch_size: int
) -> tuple[torch.nn.Module, slice]:
    """The module to call in the training step and this rank's slice of each global batch.

    ``train.batch_size`` is the global batch: with N processes each takes batch_size / N images
    and DDP averages the gradients, so the learning rate needs no rescaling (and is not rescaled).
    """
    if not runtime.distributed:
        return method, slice(None)
    world, rank = runtime.world_size, runtime.rank
    if batch_size % world:
        raise KdpipeError(f"train.batch_size={batch_size} must be divisible by the {world} DDP processes")
    if runtime.device.type == "cuda" and train_cfg.sync_batchnorm:
        # (CPU/gloo has no SyncBatchNorm: there each process normalises with its shard's statistics)
        method.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.student)
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    # find_unused_parameters: some methods leave parts idle in some epochs (fitnets' hint stage)
    DDP = torch.nn.parallel.DistributedDataParallel
    if method.ddp_local_buffers:
        DDP._set_params_and_buffers_to_ignore_for_model(method, list(method.ddp_local_buffers))
    ddp = DDP(method, device_ids=device_ids, find_unused_parameters=True)
    per_rank = batch_size // world
    return ddp, slice(rank * per_rank, (rank + 1) * per_rank)


def all_reduce_sums(
    sums: dict[str, torch.Tensor], terms: dict[str, torch.Tensor], count: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    keys = list(sums) + [f"term:{k}" for k in terms]
    values = [sums[k] for k in sums] + [torch.as_tensor(terms[k], device=device) for k in terms]
    packed = torch.stack([v.float() for v in values] + [torch.tensor(float(count), device=device)])
    torch.distributed.all_reduce(packed)
    reduced = dict(zip(keys, packed[:-1]))
    return (
        {k: reduced[k] for k in sums},
        {k: reduced[f"term:{k}"] for k in terms},
        int(packed[-1].item()),
    )


def summary(result: FitResult) -> dict[str, Any]:
    return {
        "best_epoch": result.best_epoch,
        "best_val_accuracy": round(result.best_val_accuracy, 6),
        "best_val_loss": round(result.best_val_loss, 6),
        "last_val_accuracy": round(result.last_val_accuracy, 6),
        "epochs": result.epochs,
        "train_seconds": round(result.train_seconds, 2),
        "images_per_second": round(result.images_per_second, 1),
    }
