"""Training: augmented input pipeline, checkpoints, best epoch chosen on PublicTest.

One main model trains on the labels; optional students train beside it on the same augmented
batches and learn from its (temperature-softened) scores as well as from the labels: online
distillation, one pass over the data for every model. Each model keeps its own best epoch on
PublicTest and is exported to its own run folder as a float32 ``best.keras``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import yaml
from keras import layers

from fer_edge.record.diskspace import fsync_directory
from train import data
from train.augment import augment_batch
from train.config import ConfigError, ModelConfig, TrainConfig, load_config, to_dict
from train.models import MirrorImage, build_model, count_macs, grow_from
from train.progress import BatchProgress, format_duration

log = logging.getLogger(__name__)

LAST = "last.keras"  # the whole trainer (every model + optimizer state), for --resume
LAST_EPOCH = "last.json"  # how many epochs last.keras holds, and the random generators' states then
BEST = "best.keras"  # one model, float32, at its best PublicTest epoch
BEST_WEIGHTS = "best.weights.h5"
HISTORY = "history.csv"
RUN_CONFIG = "config.yaml"  # the recipe the run was trained with
# what a resume may change: how long the run trains, where it reads and writes, how it checkpoints.
# None changes what an epoch trains; nor does where the weights started (model.init, model.grow),
# which the checkpoint replaces and config.yaml keeps as they were.
RESUME_MAY_CHANGE = ("epochs", "output_dir", "data", "cache_dir", "workers", "checkpoint_every")


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` into a file beside ``path``, synced, then renamed over ``path``: a kill or a full disk
    mid-write leaves the previous ``path`` whole, so a resume still finds a checkpoint it can read."""
    stem, _, suffix = path.name.partition(".")
    tmp = path.with_name(f"{stem}.partial.{suffix}")  # Keras requires the suffix (.keras, .weights.h5)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # Keras and h5py leave it out: the error line names the file
        raise
    fsync_directory(path.parent)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


class AugmentedSequence(keras.utils.PyDataset):
    """One pass over the whole training split per epoch, reshuffled and re-augmented each time."""

    def __init__(self, split: data.Split, cfg: TrainConfig, outputs: list[str], epoch: int = 0):
        super().__init__(workers=cfg.workers, use_multiprocessing=False, max_queue_size=4 * cfg.workers)
        self.split, self.cfg, self.outputs = split, cfg, outputs
        self.batch_size = cfg.batch_size
        self.on_epoch_begin_index(epoch)

    def on_epoch_begin_index(self, epoch: int) -> None:
        # every draw depends on (seed, epoch, batch) only, so a resumed run replays the same stream
        self.epoch = epoch
        self.order = np.random.default_rng((self.cfg.seed, epoch)).permutation(len(self.split))

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __getitem__(self, index: int):
        idx = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng((self.cfg.seed, self.epoch, index))
        x = augment_batch(self.split.x[idx], rng, self.cfg.augment)
        y = one_hot(self.split.y[idx])
        return x[..., None].astype("float32"), {name: y for name in self.outputs}

    def on_epoch_end(self) -> None:
        self.on_epoch_begin_index(self.epoch + 1)


def one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(len(data.CLASS_NAMES), dtype="float32")[y]


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Per-epoch learning rate: linear warm-up, then cosine (or constant) to ``min_ratio``."""
    peak, sched = cfg.optimizer.learning_rate, cfg.schedule
    if epoch < sched.warmup_epochs:
        return peak * (epoch + 1) / (sched.warmup_epochs + 1)
    if sched.name == "constant":
        return peak
    span = max(1, cfg.epochs - sched.warmup_epochs)
    progress = (epoch - sched.warmup_epochs) / span
    return peak * (sched.min_ratio + (1 - sched.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    opt = cfg.optimizer
    if opt.name == "adamw":
        optimizer = keras.optimizers.AdamW(opt.learning_rate, weight_decay=opt.weight_decay)
    elif opt.name == "sgd":
        optimizer = keras.optimizers.SGD(
            opt.learning_rate, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay
        )
    else:  # load_config rejects any other
        raise ValueError(f"optimizer.name: unknown optimizer {opt.name!r} (adamw or sgd)")
    # decay the kernels only: shrinking BatchNorm's scale and shift or a bias regularizes nothing
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch: every model's PublicTest accuracy, and when the run will end."""

    def __init__(self, plan: EpochPlan, first_epoch: int, names: list[str]):
        super().__init__()
        self.plan, self.first, self.names = plan, first_epoch, names
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        now = time.monotonic()
        eta = (now - self.started) / (epoch + 1 - self.first) * (self.plan.epochs - epoch - 1)
        scores = "  ".join(
            f"{name} {_metric(logs, name, 'accuracy'):.4f}/{_metric(logs, name, 'val_accuracy'):.4f}"
            for name in self.names
        )
        log.info(
            "epoch %d/%d  acc train/PublicTest: %s  lr %.2e  took %s  run ends in %s",
            epoch + 1,
            self.plan.epochs,
            scores,
            _current_learning_rate(self.model),
            format_duration(now - self.epoch_started),
            format_duration(eta),
        )


def _metric(logs: dict, name: str, key: str) -> float:
    """``key`` (e.g. val_accuracy) of output ``name``; Keras names a sole output's metrics without it."""
    val, base = ("val_", key[4:]) if key.startswith("val_") else ("", key)
    for candidate in (f"{val}{name}_{base}", key):
        if candidate in logs:
            return float(logs[candidate])
    return float("nan")


def _current_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class EpochPlan:
    """The number of epochs, fixed by the config or, under a time budget, once the first epochs are timed.

    The cosine schedule depends on the total, so it is decided once (after the warm-up, whose
    learning rates do not depend on it) and written into each run's config.yaml, which then
    reproduces the run without a budget.
    """

    def __init__(self, cfg: TrainConfig, deadline: float | None, run_dirs: list[Path]):
        self.cfg, self.epochs, self.deadline, self.run_dirs = cfg, cfg.epochs, deadline, run_dirs
        self.decide_after = max(3, cfg.schedule.warmup_epochs + 1)

    def learning_rate(self, epoch: int) -> float:
        return learning_rate(dataclasses.replace(self.cfg, epochs=self.epochs), epoch)

    def write_configs(self) -> None:
        text = yaml.safe_dump(to_dict(dataclasses.replace(self.cfg, epochs=self.epochs)), sort_keys=False)
        for run_dir in self.run_dirs:
            write_text_atomically(run_dir / RUN_CONFIG, text)
            if self.epochs != self.cfg.epochs and (run_dir / "run.json").is_file():
                # the configuration file would train cfg.epochs: only the run's own config.yaml reproduces it
                info = json.loads((run_dir / "run.json").read_text())
                info["config"] = str(run_dir / RUN_CONFIG)
                write_text_atomically(run_dir / "run.json", json.dumps(info, indent=2))


class BudgetCallback(keras.callbacks.Callback):
    def __init__(self, plan: EpochPlan, first_epoch: int):
        super().__init__()
        self.plan, self.first = plan, first_epoch
        self.ends: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.monotonic())
        plan = self.plan
        if plan.deadline is not None and epoch + 1 - self.first == plan.decide_after:
            # the first epoch compiles; time the ones after it
            per_epoch = (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)
            affordable = int((plan.deadline - time.monotonic()) / per_epoch * 0.9)  # slack for slower epochs
            plan.epochs = max(epoch + 1, min(plan.cfg.epochs, epoch + 1 + affordable))
            plan.write_configs()
            log.info("time budget: %.1fs per epoch, training %d epochs in all", per_epoch, plan.epochs)
        if epoch + 1 >= plan.epochs:
            self.model.stop_training = True


class BestWeights(keras.callbacks.Callback):
    """Each model's weights at its best PublicTest accuracy so far."""

    def __init__(self, nets: dict[str, keras.Model], run_dirs: dict[str, Path], best_so_far: dict[str, float]):
        super().__init__()
        self.nets, self.run_dirs, self.best = nets, run_dirs, best_so_far

    def on_epoch_end(self, epoch, logs=None):
        for name, net in self.nets.items():
            accuracy = _metric(logs or {}, name, "val_accuracy")
            if accuracy > self.best.get(name, -1.0):
                self.best[name] = accuracy
                write_atomically(self.run_dirs[name] / BEST_WEIGHTS, net.save_weights)


class RunHistories(keras.callbacks.Callback):
    """Each run folder's own history.csv: its model's loss and accuracy, train and PublicTest."""

    FIELDS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss", "learning_rate")

    def __init__(self, run_dirs: dict[str, Path], append: bool):
        super().__init__()
        self.run_dirs = run_dirs
        if not append:
            for run_dir in run_dirs.values():
                with open(run_dir / HISTORY, "w", newline="") as fh:
                    csv.writer(fh).writerow(self.FIELDS)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        lr = _current_learning_rate(self.model)
        for name, run_dir in self.run_dirs.items():
            row = [epoch] + [_metric(logs, name, key) for key in self.FIELDS[1:-1]] + [lr]
            with open(run_dir / HISTORY, "a", newline="") as fh:
                csv.writer(fh).writerow(row)


class LastCheckpoint(keras.callbacks.Callback):
    def __init__(self, path: Path, every: int, plan: EpochPlan):
        super().__init__()
        self.path, self.every, self.plan = path, every, plan

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch + 1 >= self.plan.epochs:
            # last.json second: a kill between the two leaves it naming the previous checkpoint's epoch,
            # so a resume trains an epoch again rather than skipping one
            write_atomically(self.path, self.model.save)
            progress = {
                "epochs": epoch + 1,
                "seed_states": [keras.ops.convert_to_numpy(state).tolist() for state in seed_states(self.model)],
            }
            write_text_atomically(self.path.with_name(LAST_EPOCH), json.dumps(progress))


def seed_states(model: keras.Model) -> list:
    """The states of the model's random generators (dropout's masks), in layer order: a saved model leaves them
    out, so a resume without them would draw the masks of the run's first epochs again."""
    return [variable for variable in model.variables if variable.name == "seed_generator_state"]


def restore_seed_states(model: keras.Model, saved: list | None) -> None:
    states = seed_states(model)
    if not states:
        return
    if saved is None or len(saved) != len(states):
        log.warning("the checkpoint holds no random generator states for this model: dropout draws afresh")
        return
    for state, value in zip(states, saved):
        state.assign(np.asarray(value, dtype=state.dtype))


@keras.saving.register_keras_serializable(package="fer")
class StopGradient(layers.Layer):
    def call(self, x):
        return keras.ops.stop_gradient(x)


@keras.saving.register_keras_serializable(package="fer")
class DistillationLoss(keras.losses.Loss):
    """KL(teacher || student) of temperature-softened scores, times T^2 (Hinton et al., 2015).

    ``y_pred`` is the student's scores with the teacher's appended (a Keras loss sees one output);
    the labels are ignored. Scores are softmax outputs, so their logs are the logits up to a
    per-row constant, which the softmax removes again.
    """

    def __init__(self, temperature: float = 4.0, name="distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        ops = keras.ops
        n = len(data.CLASS_NAMES)
        y_pred = ops.cast(y_pred, "float32")
        student = ops.log(ops.clip(y_pred[:, :n], 1e-7, 1.0)) / self.temperature
        teacher = ops.log(ops.clip(y_pred[:, n:], 1e-7, 1.0)) / self.temperature
        teacher_p = ops.softmax(teacher, axis=-1)
        kl = ops.sum(teacher_p * (ops.log_softmax(teacher, axis=-1) - ops.log_softmax(student, axis=-1)), axis=-1)
        return kl * self.temperature**2

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def build_trainer(cfg: TrainConfig, load_init: bool = True) -> tuple[keras.Model, dict[str, keras.Model]]:
    """Every model of the run in one graph, outputs named by run: ``<run>`` (scores) for each model
    and ``<run>_distill`` (its scores + the teacher's, gradient stopped) for each one that distils.

    The teacher is the main model, or, with ``distill.teachers``, the frozen mean of those models.
    Each model starts from its ``init`` checkpoint unless ``load_init`` is false (a resume, whose
    checkpoint replaces those weights anyway).
    """
    nets = {}
    for name, model_cfg in cfg.models.items():
        nets[name] = build_model(model_cfg.name, name=name, **model_cfg.params)
        if model_cfg.init and load_init:
            if model_cfg.grow:
                grow_from(nets[name], keras.models.load_model(model_cfg.init))
                log.info("%s starts from %s, grown to its widths", name, model_cfg.init)
            else:
                nets[name].load_weights(model_cfg.init)
                log.info("%s starts from %s", name, model_cfg.init)
    inputs = keras.Input((data.IMAGE_SIZE, data.IMAGE_SIZE, 1), name="pixels")
    outputs = {name: net(inputs) for name, net in nets.items()}
    if cfg.distill.teachers:
        teacher, pupils = frozen_teacher(cfg, inputs), list(nets)
    else:
        teacher, pupils = outputs[cfg.run_name], list(cfg.students)
    for name in pupils:
        outputs[f"{name}_distill"] = layers.Concatenate(name=f"{name}_distill")(
            [outputs[name], StopGradient(name=f"{name}_teacher")(teacher)]
        )
    return keras.Model(inputs, outputs, name="trainer"), nets


def frozen_teacher(cfg: TrainConfig, inputs):
    scores = []
    for index, path in enumerate(cfg.distill.teachers):
        model = keras.models.load_model(path)
        model.name = f"teacher{index}"  # the file may hold a model named like one being trained
        model.trainable = False
        scores.append(model(inputs, training=False))
        if cfg.distill.teacher_flip:
            scores.append(model(MirrorImage()(inputs), training=False))
        log.info("teacher %s%s", path, " (and its mirror image)" if cfg.distill.teacher_flip else "")
    return layers.Average(name="teacher_mean")(scores) if len(scores) > 1 else scores[0]


def distilling(cfg: TrainConfig) -> list[str]:
    """The runs whose loss has a distillation term."""
    return list(cfg.models) if cfg.distill.teachers else list(cfg.students)


def compile_trainer(trainer: keras.Model, cfg: TrainConfig) -> None:
    labels = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    losses, weights, metrics = {}, {}, {}
    for name in cfg.models:
        losses[name], weights[name], metrics[name] = labels, 1.0, ["accuracy"]
    for name in distilling(cfg):
        weights[name] = 1.0 - cfg.distill.weight
        losses[f"{name}_distill"] = DistillationLoss(cfg.distill.temperature)
        weights[f"{name}_distill"] = cfg.distill.weight
    jit = cfg.jit_compile
    if jit == "auto":
        jit = keras.backend.backend() == "jax"
    trainer.compile(optimizer=make_optimizer(cfg), loss=losses, loss_weights=weights, metrics=metrics, jit_compile=jit)


def restore_checkpoint(trainer: keras.Model, path: Path) -> None:
    """Load a :data:`LAST` checkpoint (every weight and the optimizer's state) into a trainer built
    and compiled afresh from the config.

    Loading the saved trainer whole would lose the optimizer's weight-decay exclusions, which Keras
    does not serialize: a resumed run would decay BatchNorm and biases.
    """
    trainer.optimizer.build(trainer.trainable_variables)
    trainer.load_weights(path)


def export_best(run_dir: Path, model_cfg: ModelConfig, name: str) -> Path:
    """``best.weights.h5`` into a float32 ``best.keras`` (a mixed-precision policy would otherwise
    travel into the converted model)."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = build_model(model_cfg.name, name=name, **model_cfg.params)
        model.load_weights(run_dir / BEST_WEIGHTS)
        write_atomically(run_dir / BEST, model.save)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    return run_dir / BEST


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / HISTORY
    if not path.is_file():
        return []
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        # each row is appended whole, line end last: one without it was cut off (a kill, a full disk)
        log.warning("%s: dropping its last row, cut off: %r", path, lines.pop())
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(lines)]


def has_gpu() -> bool:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].platform == "gpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def resumed_config(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """The config ``run_dir`` was trained with, taking from ``cfg`` only :data:`RESUME_MAY_CHANGE`.

    ConfigError naming the keys where ``cfg`` differs otherwise: the run would go on under another
    recipe than its config.yaml records (or fail to load its checkpoint into another architecture).
    """
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        return cfg
    try:
        saved = load_config(path, check_files=False)  # the starting weights: the checkpoint replaces them
    except ConfigError as exc:
        raise ConfigError(f"cannot resume {run_dir}: {path}: {exc}") from None
    theirs, ours = _key_paths(to_dict(saved)), _key_paths(to_dict(cfg))
    differ = sorted(
        key
        for key in theirs.keys() | ours.keys()
        if theirs.get(key) != ours.get(key)
        and key.split(".")[0] not in RESUME_MAY_CHANGE
        and not _starting_weights(key)
    )
    if differ:
        raise ConfigError(
            f"cannot resume {run_dir}: {', '.join(differ)} differ from its {RUN_CONFIG} (a resume may change only "
            f"{', '.join(RESUME_MAY_CHANGE)}; give another recipe its own run_name)"
        )
    return dataclasses.replace(saved, **{key: getattr(cfg, key) for key in RESUME_MAY_CHANGE})


def _key_paths(value, path: str = "") -> dict:
    """Every leaf of a nested mapping by its key path (``model.params.widths``), lists as tuples."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _key_paths(item, f"{path}{name}.").items()}
    return {path[:-1]: tuple(value) if isinstance(value, list) else value}


def _starting_weights(key: str) -> bool:
    """``model.init``, ``students.<name>.grow``...: a resume loads the checkpoint instead."""
    parts = key.split(".")
    return parts[-1] in ("init", "grow") and (len(parts) == 2 and parts[0] == "model" or parts[0] == "students")


def check_nothing_trained_is_replaced(cfg: TrainConfig, resume: bool) -> None:
    """ConfigError where starting ``cfg`` afresh would replace a trained model in one of its run folders.

    With ``resume`` a folder of the same recipe (a run stopped before its first checkpoint) starts again; one of
    another recipe (a student's folder of another config, say) is refused as :func:`resumed_config` would.
    """
    for run_dir in cfg.run_dirs.values():
        if not any((run_dir / name).is_file() for name in (BEST_WEIGHTS, BEST, LAST)):
            continue
        if resume:
            resumed_config(cfg, run_dir)
            continue
        raise ConfigError(
            f"{run_dir} holds a trained run: continue it with --resume (make train does), train this one under "
            f"another --run-name or --output-dir, or remove {run_dir} to train it again from the start"
        )


def truncate_history(run_dir: Path, epochs: int) -> None:
    """Drop the rows after ``epochs`` (epochs a resumed run will train again); the rows kept stay byte for byte
    (the csv module ends them with CR LF, which reading as text would turn into LF)."""
    path = run_dir / HISTORY
    if path.is_file():
        kept = b"".join(path.read_bytes().splitlines(keepends=True)[: 1 + epochs])
        write_atomically(path, lambda tmp: tmp.write_bytes(kept))


def train(
    cfg: TrainConfig, resume: bool = False, deadline: float | None = None, config_path: str | None = None
) -> Path:
    """Train ``cfg``'s model (and students); return the main run folder.

    With a ``deadline`` (``time.monotonic()`` seconds) the number of epochs is cut, once, to what
    fits before it (see :class:`EpochPlan`). ``config_path`` is the configuration file that alone
    reproduces the run, if one does (run.json names it; else the run folder's own config.yaml).
    """
    main_dir = cfg.run_dirs[cfg.run_name]
    resuming = resume and (main_dir / LAST).is_file() and (main_dir / LAST_EPOCH).is_file()
    if resuming:
        cfg = resumed_config(cfg, main_dir)
    else:
        check_nothing_trained_is_replaced(cfg, resume)
    # the data first: a run that cannot load it leaves no run folder behind
    root = data.resolve_data_dir(cfg.data)
    train_split = data.load_split(root, "train", cfg.cache_dir)
    if cfg.limit_per_class:
        train_split = train_split.head(cfg.limit_per_class, cfg.seed)
    public = data.load_split(root, "public", cfg.cache_dir)
    log.info("data %s: %d train, %d PublicTest images", root, len(train_split), len(public))

    keras.utils.set_random_seed(cfg.seed)
    precision = cfg.precision
    on_gpu = has_gpu()
    if precision != "float32" and not on_gpu:
        log.warning("no GPU: training in float32 (%s would be emulated on this CPU, and slower)", precision)
        precision = "float32"
    keras.mixed_precision.set_global_policy(precision)
    model_cfgs, run_dirs = cfg.models, cfg.run_dirs
    for run_dir in run_dirs.values():
        run_dir.mkdir(parents=True, exist_ok=True)
    if resume and not resuming:
        log.warning("nothing to resume in %s; starting afresh", main_dir)
    trainer, nets = build_trainer(cfg, load_init=not resuming)
    compile_trainer(trainer, cfg)
    first_epoch, best_so_far = 0, {}
    if resuming:
        restore_checkpoint(trainer, main_dir / LAST)
        progress = json.loads((main_dir / LAST_EPOCH).read_text())
        first_epoch = progress["epochs"]
        restore_seed_states(trainer, progress.get("seed_states"))
        # best.weights.h5 may come from an epoch after the checkpoint: keep its score as the bar
        best_so_far = {
            name: max((row["val_accuracy"] for row in read_history(d)), default=-1.0) for name, d in run_dirs.items()
        }
        for run_dir in run_dirs.values():
            truncate_history(run_dir, first_epoch)
        if first_epoch >= cfg.epochs:
            log.info(
                "%s has trained %d of %d epochs: nothing to train (more epochs: --epochs N); its best epoch is "
                "exported again",
                main_dir,
                first_epoch,
                cfg.epochs,
            )
        else:
            log.info("resuming %s at epoch %d (best PublicTest so far %s)", main_dir, first_epoch + 1, best_so_far)
    plan = EpochPlan(cfg, deadline, list(run_dirs.values()))
    plan.write_configs()
    for name, run_dir in run_dirs.items():
        net = nets[name]
        info = {
            "labels": list(data.CLASS_NAMES),
            "model": model_cfgs[name].name,
            "macs": count_macs(net),
            "params": int(net.count_params()),
            "backend": keras.backend.backend(),
            "data": str(root),
            "config": config_path or str(run_dir / RUN_CONFIG),
            "precision": precision,
        }
        if name in distilling(cfg):
            info["distilled_from"] = list(cfg.distill.teachers) or cfg.run_name
        write_text_atomically(run_dir / "run.json", json.dumps(info, indent=2))
        log.info("%s: %s, %.1fM MACs, %.2fM parameters", name, info["model"], info["macs"] / 1e6, info["params"] / 1e6)
    log.info("backend %s, precision %s, %d input threads", keras.backend.backend(), precision, cfg.workers)

    outputs = list(trainer.output)
    public_y = one_hot(public.y)
    batches = AugmentedSequence(train_split, cfg, outputs, first_epoch)
    callbacks = [
        keras.callbacks.LearningRateScheduler(plan.learning_rate),
        BestWeights(nets, run_dirs, best_so_far),
        RunHistories(run_dirs, append=first_epoch > 0),
        LastCheckpoint(main_dir / LAST, cfg.checkpoint_every, plan),
        BudgetCallback(plan, first_epoch),
        EpochLog(plan, first_epoch, list(model_cfgs)),
        BatchProgress(plan.epochs, first_epoch, len(batches), cfg.batch_size, on_gpu, epochs_now=lambda: plan.epochs),
    ]
    if first_epoch < cfg.epochs:
        trainer.fit(
            batches,
            validation_data=(public.x[..., None].astype("float32"), {name: public_y for name in outputs}),
            validation_batch_size=256,
            epochs=cfg.epochs,
            initial_epoch=first_epoch,
            shuffle=False,  # the batches reshuffle by (seed, epoch): Keras would reorder them by a state no resume has
            callbacks=callbacks,
            verbose=0,
        )
    export_runs(cfg)
    return main_dir


def export_runs(cfg: TrainConfig) -> None:
    """Every model's ``best.weights.h5`` into its float32 ``best.keras``."""
    for name, model_cfg in cfg.models.items():
        run_dir = cfg.run_dirs[name]
        if (run_dir / BEST_WEIGHTS).is_file():
            export_best(run_dir, model_cfg, name)
