"""The three training stages: teacher (cross-entropy), assistant (distilled from the teacher)
and student (distilled from the assistant, or from the teacher when the chain is off)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from kdpipe import paths
from kdpipe.config import DistillConfig, Params
from kdpipe.data.batches import BatchTransform
from kdpipe.data.prepared import IMAGENET_MEAN, IMAGENET_STD, load_meta, load_prepared
from kdpipe.distributed import is_main_process
from kdpipe.engine.resume import EpochCheckpoints, code_digest, fingerprint
from kdpipe.engine.runtime import cpu_isa, setup_runtime, teacher_chunk
from kdpipe.engine.trainer import EpochLogger, FitResult, fit, summary
from kdpipe.errors import MissingInputError
from kdpipe.io import sha256_file, write_json
from kdpipe.methods import METHODS, MethodContext, build_method, check_link
from kdpipe.models.checkpoint import ModelInfo, load_checkpoint, save_checkpoint
from kdpipe.models.imported import load_weights
from kdpipe.models.registry import build_model, count_parameters, init_from_data

log = logging.getLogger("kdpipe")
ROLE_SEED_OFFSET = {"teacher": 0, "assistant": 1000, "student": 2000}
DATA_INIT_IMAGES = 5000  # training images a data-dependent initialisation sees (fastnet: patch whitening)


class DvcLiveLogger:
    """Per-epoch metrics through dvclive; dvc.yaml declares the plots itself."""

    def __init__(self, live):
        self.live = live

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.live.log_metric(name, value)
        self.live.next_step()


def link_for(params: Params, role: str) -> tuple[DistillConfig | None, str | None]:
    """The distillation settings of ``role`` and the role that teaches it."""
    if role == "teacher":
        return None, None
    if role == "assistant":
        return params.assistant.distill, "teacher"
    return params.distill, params.distill.teacher


@dataclass
class TrainedLink:
    student: torch.nn.Module
    method: str
    teacher_role: str | None
    result: FitResult
    extra_params: int
    precision: str
    device: str


def train_link(
    params: Params,
    role: str,
    link: DistillConfig | None = None,
    seed: int | None = None,
    logger: EpochLogger | None = None,
    checkpoints: EpochCheckpoints | None = None,
    teacher_checkpoint: tuple[Path, str] | None = None,
) -> TrainedLink:
    """Train ``role`` on the prepared data with its link's method (or ``link`` instead), from the
    teaching role's checkpoint (or ``teacher_checkpoint``: a checkpoint and the stage that makes it),
    resuming from ``checkpoints`` when they hold this run's state."""
    role_cfg = params.role(role)
    seed = (params.seed if seed is None else seed) + ROLE_SEED_OFFSET[role]
    default_link, teacher_role = link_for(params, role)
    link = link or default_link
    method_name = link.method if link is not None else "none"
    # a teacher run live in every step shares the step's precision and memory format
    live_teacher = METHODS[method_name].needs_teacher and not (METHODS[method_name].logits_only and link.cache_views)
    runtime = setup_runtime(params.train, seed, role_cfg.arch,
                            teacher_arch=params.role(teacher_role).arch if live_teacher else None)
    data = load_prepared(paths.PREPARED_DIR)
    meta = data.meta

    where = "distill" if role == "student" else f"{role}.distill"
    if link is not None:
        check_link(link, where)
    teacher, teacher_info = None, None
    if METHODS[method_name].needs_teacher:
        path, stage = teacher_checkpoint or (paths.checkpoint_path(teacher_role), paths.STAGE_OF_ROLE[teacher_role])
        teacher, teacher_info = load_checkpoint(path, stage)
        if teacher_info.class_names != meta.class_names or tuple(teacher_info.image_shape) != meta.image_shape:
            raise_stale(path, stage)
    size = max(meta.height, meta.width)
    student = build_model(role_cfg.arch, meta.num_classes, meta.channels, size, role_cfg.pretrained,
                          load_weights=role_cfg.checkpoint is None)
    if role_cfg.pretrained and (meta.mean, meta.std) != (IMAGENET_MEAN, IMAGENET_STD):
        log.warning("%s.pretrained: ImageNet weights expect inputs normalised with ImageNet's mean and std, but the "
                    "data uses its own (mean %s); set data.normalize: imagenet (then dvc repro re-runs prepare)",
                    role, meta.mean)
    if role_cfg.checkpoint:  # the user's weights: imported (epochs 0) or fine-tuned
        load_weights(student, role_cfg.checkpoint, role_cfg.arch, meta, f"{role}.checkpoint")
    elif not role_cfg.pretrained:  # fastnet's whitening filters come from the first training images
        sample = BatchTransform(meta, torch.device("cpu"), channels_last=False)(data["train"].images[:DATA_INIT_IMAGES])
        init_from_data(role_cfg.arch, student, sample)
    context = MethodContext(
        where=where,
        input_shape=meta.image_shape,
        build_network=lambda arch: build_model(arch, meta.num_classes, meta.channels, size),
        student_arch=role_cfg.arch,
        teacher_arch=teacher_info.arch if teacher_info is not None else None,
        num_train=len(data["train"]),
        teacher_chunk=teacher_chunk(params.train, runtime.device),
    )
    method = build_method(method_name, student, teacher, link, role_cfg.label_smoothing, context)
    log.info(
        "%s: %s%s (%s params), method %s%s, %s",
        role, role_cfg.arch, " (ImageNet-pretrained)" if role_cfg.pretrained else "", f"{count_parameters(student):,}",
        method_name, f" from {teacher_role}" if teacher is not None else "", runtime.describe(),
    )
    try:
        result = fit(method, role_cfg, params.train, data, runtime, seed, logger, desc=role, checkpoints=checkpoints)
    finally:
        method.close()
    return TrainedLink(
        student=method.student, method=method_name, teacher_role=teacher_role if teacher is not None else None,
        result=result, extra_params=method.extra_parameters(), precision=runtime.precision,
        device=runtime.device.type,
    )


def train_role(params: Params, role: str, link: DistillConfig | None = None, name: str | None = None) -> None:
    """The training stages: train ``role`` (with ``link`` instead of its own, if given), log with
    dvclive, write its checkpoint and metrics under ``name`` (default: the role's)."""
    name = name or role
    role_cfg = params.role(role)
    meta = load_meta(paths.PREPARED_DIR)
    run = run_fingerprint(params, role, link)
    checkpoints = EpochCheckpoints(paths.resume_dir(name, run), run)
    if not is_main_process():  # DDP: the other ranks train; rank 0 logs and writes
        train_link(params, role, link, checkpoints=checkpoints)
        return
    from dvclive import Live  # here, not at the top: train_link runs without DVC (benchmarks/gpu_acceptance.py)

    # (dvclive's own Live(resume=True) cannot continue a killed run: DVC deletes the stage's
    # outputs, this folder included, before it runs the stage again; the epochs are replayed instead)
    with Live(dir=str(paths.live_dir(name)), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        trained = train_link(params, role, link, logger=DvcLiveLogger(live), checkpoints=checkpoints)
    # dvclive always writes its own summary beside the curves; the stage's summary is
    # metrics/train_<role>.json, and `dvc plots show` would try to draw this one as a chart
    Path(live.metrics_file).unlink(missing_ok=True)
    result = trained.result
    info = ModelInfo(
        role=name, arch=role_cfg.arch, num_classes=meta.num_classes, image_shape=meta.image_shape,
        class_names=meta.class_names, mean=meta.mean, std=meta.std, pretrained=role_cfg.pretrained, resize=meta.resize,
        # only what the run determines: timings would make identical models differ byte for byte
        summary={k: v for k, v in summary(result).items() if k not in ("train_seconds", "images_per_second")},
    )
    write_json(
        paths.train_metrics_path(name),
        {
            "arch": role_cfg.arch,
            "method": trained.method,
            "teacher": trained.teacher_role,
            "params": count_parameters(trained.student),
            "extra_params": trained.extra_params,
            "precision": trained.precision,
            "device": trained.device,
            "cpu_isa": cpu_isa(),
            **summary(result),
            **({"checkpoint": role_cfg.checkpoint, "checkpoint_sha256": sha256_file(role_cfg.checkpoint)}
               if role_cfg.checkpoint else {}),
        },
    )
    save_checkpoint(paths.checkpoint_path(name), trained.student, info)
    checkpoints.finish()
    log.info("%s: best val accuracy %.4f at epoch %d", name, result.best_val_accuracy, result.best_epoch)


def train_twin(params: Params) -> None:
    """The student without distillation: its link with method ``none`` (the ``distill`` section's
    other keys do not reach a ``none`` run), same seed, recipe and budget."""
    train_role(params, "student", link=params.distill.model_copy(update={"method": "none", "cache_views": 0}), name=paths.TWIN)


def run_fingerprint(params: Params, role: str, link: DistillConfig | None = None) -> str:
    """What determines a training run: a saved epoch state is resumed only under the same."""
    default_link, teacher_role = link_for(params, role)
    link = link or default_link
    teacher_file = paths.checkpoint_path(teacher_role) if teacher_role and METHODS[link.method].needs_teacher else None
    return fingerprint(
        params.seed, params.train.model_dump(), params.role(role).model_dump(),
        link.model_dump() if link is not None else None,
        load_meta(paths.PREPARED_DIR).to_dict(),
        sha256_file(teacher_file) if teacher_file is not None and teacher_file.is_file() else None,
        *_imported_digest(params.role(role).checkpoint),
        code_digest(), torch.__version__,
    )


def _imported_digest(checkpoint: str | None) -> tuple[str, ...]:
    """The starting weights' hash, when a run starts from a file (nothing otherwise: the other runs'
    fingerprints stay as they were)."""
    return (sha256_file(checkpoint),) if checkpoint and Path(checkpoint).is_file() else ()


def raise_stale(teacher_file: Path, stage: str) -> None:
    raise MissingInputError(
        f"{teacher_file} was trained on other data (classes or image shape differ): run `dvc repro {stage}`"
    )
