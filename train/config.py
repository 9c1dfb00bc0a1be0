"""Training configuration: one YAML file into frozen dataclasses, built like the device's config
(:func:`fer_edge.config.builder.build_dataclass`: unknown keys rejected, errors naming the key path)."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_edge.config.builder import apply_overrides, build_dataclass, read_mapping, shown
from fer_edge.config.checks import Check, non_negative, number_range, positive, unit
from fer_edge.errors import ConfigError
from train.augment import AugmentConfig

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies


def _checked(default: Any, check: Check) -> Any:
    """A field whose value the loader checks (``check(value) -> message | None``)."""
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"  # adamw | sgd
    learning_rate: float = _checked(2e-3, positive)
    weight_decay: float = _checked(1e-4, non_negative)
    momentum: float = _checked(0.9, unit)  # sgd only
    nesterov: bool = True  # sgd only


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "cosine"  # cosine | constant
    warmup_epochs: int = _checked(2, non_negative)
    min_ratio: float = _checked(0.0, number_range(0, 1))  # final learning rate as a fraction of the peak


@dataclass(frozen=True)
class ModelConfig:
    name: str = "vgg_bn"
    params: dict = field(default_factory=dict)
    init: str | None = None  # a trained model (best.keras) of the same architecture to start from
    # init has the same layers with fewer channels: it fills each layer's leading channels and the
    # added ones start without effect on the output (train.models.grow_from)
    grow: bool = False


@dataclass(frozen=True)
class DistillConfig:
    """How ``students`` learn from the main model, which trains beside them on the same batches."""

    weight: float = _checked(0.5, number_range(0, 1))  # share of the distillation term in a student's loss
    temperature: float = _checked(4.0, positive)
    # Trained models (best.keras) whose mean scores, frozen, teach every model of the run (the main
    # one too) instead of the main model; with teacher_flip each also sees the mirrored face.
    teachers: tuple[str, ...] = ()
    teacher_flip: bool = True


@dataclass(frozen=True)
class TrainConfig:
    run_name: str = "default"
    output_dir: str = "runs"
    data: str | None = None  # FER-2013 folder or fer2013.csv; else $FER2013_DIR, else ../shared/fer2013
    cache_dir: str | None = "build/cache"
    model: ModelConfig = field(default_factory=ModelConfig)
    # run_name -> {name, params}: smaller models trained alongside ``model`` and distilled from it
    # online; each gets its own run folder and its own best epoch on PublicTest.
    students: dict[str, ModelConfig] = field(default_factory=dict)
    distill: DistillConfig = field(default_factory=DistillConfig)
    epochs: int = _checked(60, positive)
    batch_size: int = _checked(128, positive)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    label_smoothing: float = _checked(0.1, unit)
    seed: int = 1
    # a class-balanced subset of train/, for quick runs and tests
    limit_per_class: int | None = _checked(None, positive)
    precision: str = "float32"  # float32 | mixed_bfloat16
    jit_compile: str | bool = "auto"  # auto: on for JAX, off for TensorFlow (its oneDNN CPU path is faster)
    workers: int = _checked(1, positive)  # input-pipeline threads (OpenCV releases the GIL); a GPU wants several
    # epochs between full checkpoints for --resume (the best weights are kept every epoch)
    checkpoint_every: int = _checked(1, positive)

    @property
    def models(self) -> dict[str, ModelConfig]:
        """Every model the run trains, by run name: the main one first, then the students."""
        return {self.run_name: self.model, **self.students}

    @property
    def run_dirs(self) -> dict[str, Path]:
        """Each trained model's run folder, by run name."""
        return {name: Path(self.output_dir) / name for name in self.models}

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


def load_config(
    path: str | Path | None = None, overrides: dict | None = None, *, check_files: bool = True
) -> TrainConfig:
    """Load ``path`` (None: the defaults), apply dotted ``overrides`` (``{"model.name": ...}``), check it all;
    with ``check_files``, also that the files it names (``init``, ``distill.teachers``) can be read."""
    raw = apply_overrides(read_mapping(path, "settings") if path is not None else {}, overrides)
    cfg = build_dataclass(TrainConfig, raw)
    _validate(cfg)
    if check_files:
        _check_files(cfg)
    return cfg


def _check_choice(key_path: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key_path}: unknown {value!r} (choose from {', '.join(choices)})")


def _check_model(key_path: str, model: ModelConfig) -> None:
    """The architecture exists and takes every one of ``params`` (its run name is passed as ``name``)."""
    from train.models import MODELS

    _check_choice(f"{key_path}.name", model.name, sorted(MODELS))
    defaults = {n: p.default for n, p in inspect.signature(MODELS[model.name]).parameters.items() if n != "name"}
    known = sorted(defaults)
    for param, value in model.params.items():
        if param not in known:
            raise ConfigError(
                f"{key_path}.params.{param}: not a parameter of {model.name} (known: {', '.join(known) or 'none'})"
            )
        problem = _param_problem(defaults[param], value)
        if problem:
            raise ConfigError(f"{key_path}.params.{param}: {problem}, got {shown(value)}")


def _param_problem(default: Any, value: Any) -> str | None:
    """What an architecture's parameter must be, told by its default: widths (one per stage), counts, and
    rates (dropout, BatchNorm momentum)."""

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if isinstance(default, tuple):
        if isinstance(value, (list, tuple)) and value and all(count(v) for v in value):
            return None
        return "expected a list of positive integers"
    if isinstance(default, int):
        return None if count(value) else "expected a positive integer"
    if isinstance(default, float):
        rate = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if rate and 0 <= value < 1 else "expected a number in [0, 1)"
    return None


def _validate(cfg: TrainConfig) -> None:
    _check_model("model", cfg.model)
    for name, student in cfg.students.items():
        _check_model(f"students.{name}", student)
    _check_choice("optimizer.name", cfg.optimizer.name, OPTIMIZERS)
    _check_choice("schedule.name", cfg.schedule.name, SCHEDULES)
    _check_choice("precision", cfg.precision, PRECISIONS)
    if cfg.jit_compile not in ("auto", True, False):
        raise ConfigError(f"jit_compile: expected auto, true or false, got {cfg.jit_compile!r}")
    for name in cfg.students:
        if name == cfg.run_name or not name.isidentifier():
            raise ConfigError(f"students.{name}: a student needs its own run name (letters, digits, _)")
    if not cfg.run_name.isidentifier():
        raise ConfigError(f"run_name: {cfg.run_name!r} must be letters, digits and _")


def _check_files(cfg: TrainConfig) -> None:
    """The trained models the config starts from: missing, they would fail the run only after the data loaded."""
    named = [("model.init", cfg.model.init)]
    named += [(f"students.{name}.init", student.init) for name, student in cfg.students.items()]
    named += [("distill.teachers", path) for path in cfg.distill.teachers]
    for key, path in named:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path} ({exc.strerror})") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
