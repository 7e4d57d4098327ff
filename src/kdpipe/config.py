"""Typed, validated view of params.yaml, read once per stage.

Every section forbids unknown keys, so a typo such as ``distill.temprature`` is an error that
suggests the right name instead of a silently ignored setting.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdpipe.errors import ConfigError

PARAMS_FILE = "params.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def lookup(raw: Any, dotted: str) -> Any:
    """``raw["a"]["b"]`` for ``"a.b"`` in a raw (unvalidated) params tree; KeyError when absent."""
    for part in dotted.split("."):
        if not isinstance(raw, dict) or part not in raw:
            raise KeyError(dotted)
        raw = raw[part]
    return raw


def one_of(kind: str, value: str, allowed: list[str]) -> str:
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown {kind} '{value}'{hint}; allowed: {', '.join(allowed)}")
    return value


def known_architecture(value: str) -> str:
    """A registry architecture or ``timm:<name>``; ValueError naming the closest names otherwise."""
    from kdpipe.models import MODELS, TIMM_PREFIX

    if value.startswith(TIMM_PREFIX):
        from kdpipe.models.timm_models import check_name

        return check_name(value)
    try:
        return one_of("architecture", value, sorted(MODELS))
    except ValueError as exc:
        raise ValueError(f"{exc}; or {TIMM_PREFIX}<name> for a timm model") from None


class AugmentConfig(Section):
    crop_padding: int = Field(1, ge=0, description="random-crop padding in pixels (0 = off)")
    crop_pad_mode: Literal["zeros", "reflect"] = Field(
        "zeros", description="what the random crop's border holds: black, or the image mirrored (airbench)")
    hflip: bool = Field(False, description="random horizontal flip (wrong for digits/text)")
    cutout: int = Field(0, ge=0, description="side of a random square set to the mean per image (0 = off)")
    # photos (data/augment.py): on whole batches, seeded
    resized_crop_scale: tuple[float, float] | None = Field(
        None, description="RandomResizedCrop: range of the crop's share of the image area ([0.08, 1.0] is "
        "torchvision's ImageNet default; [0.35, 1.0] suits small sets); null = off")
    resized_crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop: aspect ratio range")
    auto_augment: Literal["none", "trivial", "randaugment"] = Field(
        "none", description="torchvision's TrivialAugmentWide or RandAugment on each training image")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        if self.resized_crop_scale is not None and not 0 < self.resized_crop_scale[0] <= self.resized_crop_scale[1] <= 1:
            raise ValueError(f"resized_crop_scale {list(self.resized_crop_scale)} must be [low, high] with 0 < low <= high <= 1")
        if not 0 < self.resized_crop_ratio[0] <= self.resized_crop_ratio[1]:
            raise ValueError(f"resized_crop_ratio {list(self.resized_crop_ratio)} must be [low, high] with 0 < low <= high")
        return self


class DataConfig(Section):
    dataset: str = "digits"
    root: str = Field("data/raw", description="folder of on-disk data sets (archives, ImageFolder trees)")
    download: bool = Field(True, description="download torchvision/MedMNIST files when missing")
    medmnist_flag: str = "pathmnist"
    medmnist_size: Literal[28, 64, 128, 224] = 28
    image_size: int | None = Field(None, ge=4, le=1024, description="resize images to this square size")
    resize: Literal["squash", "center_crop", "pad"] | None = Field(
        None, description="how image_size is reached: squash (stretch), center_crop (shorter side, then the centre), "
        "pad (longer side, black borders); default: center_crop for imagefolder, squash for the square array sets")
    channels: Literal[1, 3] | None = Field(None, description="force gray (1) or RGB (3); default: from the data")
    normalize: Literal["dataset", "imagenet"] = Field(
        "dataset", description="per-channel mean and std the images are normalised with: the training split's own "
        "(dataset) or ImageNet's (imagenet: what ImageNet-pretrained weights were trained on; RGB only)")
    skip_corrupt: bool = Field(False, description="skip unreadable images (counted) instead of failing")
    workers: int = Field(0, ge=0, description="decoding processes (0 = all cores)")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    max_train_samples: int | None = Field(None, ge=1)
    max_test_samples: int | None = Field(None, ge=1)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from kdpipe.data.sources import SOURCES

        return one_of("data set", v, sorted(SOURCES))

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must stay below 0.9")
        return self


class TrainConfig(Section):
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: the measured choice for the trained network's family on this CPU type
    # (src/kdpipe/engine/rules.json, benchmarks/engine_rule.py), else bf16 where the CPU runs it natively
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto"] | bool = Field("auto", description="NHWC models and batches; auto: the measured rule, else on")
    num_threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = all cores")
    deterministic: bool = True
    teacher_chunk: int = Field(
        0, ge=0, description="logits-only methods: run the teacher on chunks of this many images; 0 = auto "
        "(32 on CPUs, where a chunk's activations stay in cache; whole batches on GPUs)"
    )
    nproc_per_node: int = Field(
        1, ge=1, description="DDP processes on this machine: the training stages re-launch under torchrun"
    )
    sync_batchnorm: bool = Field(True, description="DDP on GPUs: BatchNorm statistics over the global batch")
    compile: bool = Field(False, description="torch.compile the training step (minutes of compilation first)")
    small_conv_gemm: Literal["auto"] | bool = Field(
        "auto", description="CPU training: 3x3 convolutions with outputs of at most 16 pixels as im2col + GEMM; "
        "auto: the measured rule, else on"
    )
    augment: AugmentConfig = AugmentConfig()


class RoleConfig(Section):
    """What every trained network shares: architecture and its optimisation recipe."""

    arch: str
    pretrained: bool = Field(False, description="start from torchvision's ImageNet weights (torch hub cache)")
    epochs: int = Field(ge=0, description="0: import ``checkpoint`` as it is, scored on validation, not trained")
    checkpoint: str | None = Field(
        None, description="start from these weights (a kdpipe checkpoint or a state dict of ``arch``), a file "
        "under models/imported/, which the training stages depend on; with epochs 0 the model is imported",
    )
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    scheduler: Literal["onecycle", "triangle", "cosine", "step", "multistep", "none"] = "onecycle"
    warmup_fraction: float = Field(0.25, ge=0, lt=1, description="onecycle, triangle: share of steps warming up")
    step_size: int = Field(30, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step, multistep: decay factor")
    milestones: list[int] = Field(
        default_factory=list, description="multistep: the epochs after which the lr is multiplied by gamma "
        "(the CIFAR benchmark recipe: [150, 180, 210] of 240)",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    norm_bias_lr_scale: float = Field(
        1.0, ge=1, description="learning-rate multiple for the normalisation layers' shifts, their weight decay "
        "divided by it (airbench: 64)")
    lookahead_every: int = Field(
        0, ge=0, description="every this many steps, pull the weights towards a running average of them and restart "
        "from it (airbench's Lookahead; 0 = off); the average is the model at the end")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        return known_architecture(v)

    @model_validator(mode="after")
    def _imported(self) -> RoleConfig:
        from kdpipe.models import MODEL_FILE_ARCHS

        if self.epochs == 0 and not self.checkpoint:
            raise ValueError("epochs 0 imports a model: set checkpoint to its file")
        if self.arch in MODEL_FILE_ARCHS and (self.epochs != 0 or not self.checkpoint or self.pretrained):
            raise ValueError(f"arch {self.arch}: the checkpoint file is the network, imported as it is: set checkpoint "
                             "to the file, epochs: 0 and pretrained: false")
        if self.checkpoint and Path(self.checkpoint).parts[:2] != ("models", "imported"):
            raise ValueError(
                f"checkpoint {self.checkpoint} must sit under models/imported/ (the training stages' dependency): "
                "copy it there, or `dvc import <repository> <path> -o models/imported/<file>`"
            )
        return self

    @model_validator(mode="after")
    def _milestones(self) -> RoleConfig:
        m = self.milestones
        if self.scheduler == "multistep" and not m:
            raise ValueError("scheduler multistep needs milestones (epochs after which the lr decays)")
        if m and (m != sorted(set(m)) or m[0] < 1 or m[-1] >= self.epochs):
            raise ValueError(f"milestones must increase, each between 1 and epochs - 1 ({self.epochs - 1}) (got {m})")
        return self


class DistillConfig(Section):
    """One distillation link. ``alpha`` weights the distillation term:
    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)."""

    model_config = ConfigDict(extra="allow", validate_default=True)

    method: str = "kd"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    cache_views: int = Field(
        0, ge=0, description="0: teacher run live; K: K fixed augmented views per image, teacher logits computed once"
    )
    logit_standardize: bool = Field(
        False,
        description="z-score student and teacher logits per sample inside the distillation term (Sun et al. 2024); "
        "logit methods only: kd, dkd, dist, ctkd",
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from kdpipe.methods import METHODS

        return one_of("distillation method", v, sorted(METHODS))

    @model_validator(mode="after")
    def _method_sections(self) -> DistillConfig:
        # Extra keys are allowed only as per-method sections (``distill.<method>: {...}``). Their
        # contents (and whether the method can use cache_views) are the method's to check, in the
        # stage that trains the link (``kdpipe.methods.check_link``; ``python -m kdpipe.config``
        # checks every link at once): validating them here would make every stage import, and so
        # depend on, every method's code.
        from kdpipe.methods import METHODS

        for key in self.model_extra or {}:
            if key not in METHODS:
                fields = sorted(set(type(self).model_fields) | set(METHODS))
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"unknown key '{key}'{hint}")
        return self


PER_PAIR = "per_pair"  # distill.<method>.per_pair.<pair>: a benchmark pair's own settings for the method


def for_pair(link: DistillConfig, pair: str) -> DistillConfig:
    """The link as benchmark pair ``pair`` runs it: each method section's ``per_pair.<pair>``
    settings over the section's own, ``per_pair`` itself dropped (a published recipe may set a
    method per pair: mdistiller's DKD β is 2 for ResNet-56 -> ResNet-20, 8 by default)."""
    sections = {}
    for name, raw in (link.model_extra or {}).items():
        if isinstance(raw, dict) and PER_PAIR in raw:
            own = {k: v for k, v in raw.items() if k != PER_PAIR}
            sections[name] = own | (raw[PER_PAIR] or {}).get(pair, {})
    if not sections:
        return link
    return type(link).model_validate(link.model_dump() | sections)


class AssistantConfig(RoleConfig):
    distill: DistillConfig = DistillConfig()


class StudentDistillConfig(DistillConfig):
    teacher: Literal["assistant", "teacher"] = Field(
        "assistant", description="who teaches the student: the assistant (chain) or the teacher"
    )


class QatConfig(Section):
    """Quantization-aware distillation of the student (models/student_qat_int8.onnx)."""

    epochs: int = Field(2, ge=1, description="fine-tuning epochs under simulated int8")
    lr: float = Field(1e-5, gt=0, description="peak learning rate (cosine decay), far below training's")
    weight_decay: float = Field(0.0, ge=0)


class QuantizeConfig(Section):
    opset: int = Field(18, ge=13)
    atol: float = Field(1e-4, gt=0, description="max |logit difference| ONNX fp32 vs PyTorch")
    calibration_samples: int = Field(512, ge=1)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    max_drop: float = Field(
        0.005, ge=0, lt=1, description="validation accuracy static int8 may lose against fp32; beyond it the "
        "stage also calibrates with the other methods and says which recovers it (metrics: calibration_trials)")
    qat: QatConfig = QatConfig()
    # Dynamic int8 (weights int8 ahead of time, activation ranges computed per batch at run time)
    # helps MatMul/Gemm-heavy models; for convolutions ONNX Runtime's ConvInteger is often slower.
    dynamic_op_types: list[Literal["Conv", "MatMul", "Gemm"]] = Field(
        default_factory=lambda: ["Conv", "MatMul", "Gemm"], min_length=1
    )


class CompareConfig(Section):
    """The method comparison (compare/dvc.yaml): same data, teacher, student and budget for all."""

    methods: list[str] = Field(default_factory=lambda: ["none", "kd"])
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        from kdpipe.methods import METHODS

        return [one_of("distillation method", m, sorted(METHODS)) for m in v]


class PairConfig(Section):
    """One teacher/student pair of a benchmark; the recipes are the ``teacher`` and ``student``
    sections', with these architectures."""

    teacher: str
    student: str
    teacher_lr: float | None = Field(None, gt=0, description="the teacher's learning rate for this pair, instead of teacher.lr")
    student_lr: float | None = Field(
        None, gt=0, description="the student's learning rate for this pair, instead of student.lr "
        "(the standard recipe's 0.01 for MobileNet/ShuffleNet students)",
    )

    @field_validator("teacher", "student")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        return known_architecture(v)


class BenchmarkConfig(Section):
    """A benchmark matrix (``experiments/<name>/dvc.yaml``, ``src/benchmark.py``): each pair's
    teacher trained once, then one cell per pair x method x seed."""

    pairs: dict[str, PairConfig] = Field(
        default_factory=dict, description="name -> pair; the name is the matrix axis and the file names'"
    )
    methods: list[str] = Field(default_factory=lambda: ["none", "kd"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        from kdpipe.methods import METHODS

        return [one_of("distillation method", m, sorted(METHODS)) for m in v]

    @field_validator("pairs")
    @classmethod
    def _file_names(cls, v: dict[str, PairConfig]) -> dict[str, PairConfig]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"pair name '{name}': letters, digits and _ only (it names stages and files)")
        return v


class EvaluateConfig(Section):
    latency_threads: int = Field(1, ge=1, description="CPU threads used to time batch-1 latency")
    latency_warmup: int = Field(10, ge=0)
    latency_runs: int = Field(50, ge=1)
    timing_budget_s: float = Field(
        5.0, gt=0, description="seconds spent timing each model's latency, and again its throughput: the runs "
        "stop at latency_runs/throughput_runs or when the budget is spent (after at least 3)")
    throughput_batch: int = Field(64, ge=1, description="batch size of the throughput measurement")
    throughput_runs: int = Field(10, ge=1)
    splits: list[Literal["train", "val", "test"]] = Field(
        default_factory=lambda: ["train", "val", "test"], min_length=1,
        description="splits scored (test always: metrics/evaluate.json)",
    )
    topk: int = Field(3, ge=1, description="top-k accuracy (capped at the class count)")
    ece_bins: int = Field(15, ge=2, description="bins of the expected calibration error and reliability diagram")
    feature_map_images: int = Field(6, ge=1, description="test images shown in the feature-map PNGs")
    flip_tta: bool = Field(
        False, description="also score every model on the test images averaged with their mirror images "
        "(accuracy_flip_tta): test-time augmentation for classes a horizontal flip keeps, as train.augment.hflip",
    )


class ValidateConfig(Section):
    """CI re-validation (``python -m kdpipe.validate``); no stage reads it."""

    tolerance: float = Field(
        0.009, ge=0, lt=1,
        description="largest accepted drop of any accuracy in a re-run against the committed metrics (0.009 = 0.9 pt)",
    )
    cross_machine_tolerance: float = Field(
        0.03, ge=0, lt=1,
        description="the same, when the re-run's CPU family or precision differs from the committed run's "
                    "(another floating-point path: the training trajectory differs)",
    )

    @model_validator(mode="after")
    def _cross_machine_not_stricter(self) -> "ValidateConfig":
        if self.cross_machine_tolerance < self.tolerance:
            raise ValueError(f"validate.cross_machine_tolerance ({self.cross_machine_tolerance}) is below "
                             f"validate.tolerance ({self.tolerance}): a run on another machine cannot match better")
        return self


class Params(Section):
    seed: int = 42
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    teacher: RoleConfig
    assistant: AssistantConfig
    student: RoleConfig
    distill: StudentDistillConfig = StudentDistillConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    compare: CompareConfig = CompareConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    # params.yaml's ``validate`` section; the attribute is ``validation`` because a pydantic
    # field named ``validate`` would shadow ``BaseModel.validate``.
    validation: ValidateConfig = Field(ValidateConfig(), alias="validate")

    @model_validator(mode="after")
    def _benchmark_method_sections(self) -> Params:
        # a benchmark cell depends on distill.<its method> (dvc.yaml), and DVC needs that key in params.yaml
        if self.benchmark.pairs:
            missing = [m for m in self.benchmark.methods if m not in (self.distill.model_extra or {})]
            if missing:
                raise ValueError(
                    "benchmark.methods: each method needs its section under distill, which its cells depend on; add "
                    + ", ".join(f"'{m}: {{}}'" for m in missing) + " (empty: the method's defaults)"
                )
        for method, raw in (self.distill.model_extra or {}).items():
            if not isinstance(raw, dict) or PER_PAIR not in raw:
                continue
            where = f"distill.{method}.{PER_PAIR}"
            if not self.benchmark.pairs:
                raise ValueError(f"{where}: settings per benchmark pair, but benchmark.pairs names no pair")
            if not isinstance(raw[PER_PAIR], dict):
                raise ValueError(f"{where}: a mapping <pair>: {{<setting>: <value>}}, got {raw[PER_PAIR]!r}")
            for pair, settings in raw[PER_PAIR].items():
                if pair not in self.benchmark.pairs:
                    close = difflib.get_close_matches(str(pair), list(self.benchmark.pairs), n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise ValueError(f"{where}.{pair}: no such benchmark pair{hint}; pairs: {', '.join(self.benchmark.pairs)}")
                if not isinstance(settings, dict):
                    raise ValueError(f"{where}.{pair}: a mapping of the method's settings, got {settings!r}")
        return self

    def role(self, name: str) -> RoleConfig:
        if name not in ROLES:
            raise KeyError(name)
        return getattr(self, name)

    def links(self) -> dict[str, DistillConfig]:
        """The two distillation links, by the params section that holds each."""
        return {"assistant.distill": self.assistant.distill, "distill": self.distill}


ROLES = ("teacher", "assistant", "student")


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-after"))


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    loc = _location(err["loc"])
    if err["type"] == "extra_forbidden":
        # Suggest the closest valid key of the section the typo sits in.
        section: Any = model
        for part in err["loc"][:-1]:
            fields = getattr(section, "model_fields", {}) if isinstance(section, type) else {}
            field = next((f for n, f in fields.items() if str(part) in (n, f.alias)), None)
            section = field.annotation if field is not None else None
        key = str(err["loc"][-1])
        hint = ""
        if isinstance(section, type) and issubclass(section, BaseModel):
            names = [f.alias or n for n, f in section.model_fields.items()]  # as written in params.yaml
            close = difflib.get_close_matches(key, names, n=1)
            if close:
                hint = f" (did you mean '{close[0]}'?)"
        return f"{loc}: unknown key{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    unknown = re.match(r"unknown key '([^']+)'(.*)", msg)
    if unknown:  # raised by a section validator: name the full key, not just the section
        return f"{loc}.{unknown.group(1)}: unknown key{unknown.group(2)}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{loc}: {msg}{shown}" if loc else msg  # a whole-file check names its keys itself


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, Params) for e in exc.errors()]
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))


def check_all(params: Params) -> None:
    """Everything the methods check too (their own sections, cache_views), for every link and
    compared method: imports those methods' code, so stages call it only for what they train."""
    from kdpipe.methods import check_link, link_with

    check_link(params.assistant.distill, "assistant.distill")
    # the student link as written, then as each benchmark pair runs it (its per-pair settings
    # applied): an error only there comes from those settings
    for pair in [None, *params.benchmark.pairs]:
        link = params.distill if pair is None else for_pair(params.distill, pair)
        if pair is not None and link is params.distill:
            continue
        try:
            check_link(link, "distill")
            for method in params.compare.methods:
                check_link(link.model_copy(update={"method": method}), "distill")
            for method in params.benchmark.methods:
                check_link(link_with(link, method), "distill")
        except ConfigError as exc:
            if pair is None:
                raise
            raise ConfigError(f"{exc} (benchmark pair '{pair}', its distill.<method>.{PER_PAIR}.{pair} settings applied)") from None


if __name__ == "__main__":  # python -m kdpipe.config [params.yaml]: check the whole file in seconds
    import sys

    try:
        check_all(load_params(sys.argv[1] if len(sys.argv) > 1 else PARAMS_FILE))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print("params: ok")
