"""Training: augmented input pipeline, checkpoints every epoch, best epoch chosen on PublicTest."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np
import yaml

from train import data
from train.augment import augment_batch
from train.config import TrainConfig, to_dict
from train.models import build_model, count_macs

log = logging.getLogger(__name__)

LAST = "last.keras"
BEST = "best.keras"
HISTORY = "history.csv"


class AugmentedSequence(keras.utils.PyDataset):
    """One pass over the whole training split per epoch, reshuffled and re-augmented each time."""

    def __init__(self, split: data.Split, cfg: TrainConfig, epoch: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)
        self.split, self.cfg = split, cfg
        self.batch_size = cfg.batch_size
        self.on_epoch_begin_index(epoch)

    def on_epoch_begin_index(self, epoch: int) -> None:
        self.rng = np.random.default_rng((self.cfg.seed, epoch))
        self.order = self.rng.permutation(len(self.split))

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __getitem__(self, index: int):
        idx = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng((self.cfg.seed, int(self.order[0]), index))
        x = augment_batch(self.split.x[idx], rng, self.cfg.augment)
        return x[..., None].astype("float32"), one_hot(self.split.y[idx])

    def on_epoch_end(self) -> None:
        self.on_epoch_begin_index(int(self.rng.integers(1 << 31)))


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
        return keras.optimizers.AdamW(opt.learning_rate, weight_decay=opt.weight_decay)
    if opt.name == "sgd":
        return keras.optimizers.SGD(
            opt.learning_rate, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay
        )
    raise ValueError(f"optimizer.name: unknown optimizer {opt.name!r} (adamw or sgd)")


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch with the run's ETA."""

    def __init__(self, total_epochs: int, first_epoch: int):
        super().__init__()
        self.total, self.first = total_epochs, first_epoch
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        now = time.monotonic()
        done = epoch + 1 - self.first
        eta = (now - self.started) / done * (self.total - epoch - 1)
        log.info(
            "epoch %d/%d  loss %.4f acc %.4f  val_loss %.4f val_acc %.4f  lr %.2e  %.0fs  ETA %s",
            epoch + 1, self.total, logs.get("loss", float("nan")), logs.get("accuracy", float("nan")),
            logs.get("val_loss", float("nan")), logs.get("val_accuracy", float("nan")),
            float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            now - self.epoch_started, time.strftime("%H:%M:%S", time.gmtime(eta)),
        )


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / HISTORY
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.precision != "float32":
        keras.mixed_precision.set_global_policy(cfg.precision)

    root = data.resolve_data_dir(cfg.data)
    train_split = data.load_split(root, "train", cfg.cache_dir)
    if cfg.limit_per_class:
        train_split = train_split.head(cfg.limit_per_class, cfg.seed)
    public = data.load_split(root, "public", cfg.cache_dir)
    log.info("data %s: %d train, %d PublicTest images", root, len(train_split), len(public))

    history = read_history(run_dir) if resume else []
    if resume and (run_dir / LAST).is_file() and history:
        model = keras.models.load_model(run_dir / LAST)
        first_epoch = len(history)
        best_so_far = max(row["val_accuracy"] for row in history)
        log.info("resuming %s at epoch %d (best PublicTest so far %.4f)", run_dir, first_epoch + 1, best_so_far)
    else:
        if resume:
            log.warning("nothing to resume in %s; starting afresh", run_dir)
        model = build_model(cfg.model.name, **cfg.model.params)
        first_epoch, best_so_far = 0, None
        (run_dir / HISTORY).unlink(missing_ok=True)
        jit = cfg.jit_compile
        if jit == "auto":
            jit = keras.backend.backend() == "jax"
        model.compile(
            optimizer=make_optimizer(cfg),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
            metrics=["accuracy"],
            jit_compile=jit,
        )
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (run_dir / "run.json").write_text(json.dumps({
        "labels": list(data.CLASS_NAMES),
        "model": cfg.model.name,
        "macs": count_macs(model),
        "params": int(model.count_params()),
        "backend": keras.backend.backend(),
        "data": str(root),
    }, indent=2))
    log.info("model %s: %.1fM MACs, %.2fM parameters, backend %s",
             cfg.model.name, count_macs(model) / 1e6, model.count_params() / 1e6, keras.backend.backend())

    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate(cfg, epoch)),
        keras.callbacks.ModelCheckpoint(run_dir / LAST),
        keras.callbacks.ModelCheckpoint(
            run_dir / BEST, monitor="val_accuracy", mode="max", save_best_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.CSVLogger(run_dir / HISTORY, append=first_epoch > 0),
        EpochLog(cfg.epochs, first_epoch),
    ]
    if first_epoch < cfg.epochs:
        model.fit(
            AugmentedSequence(train_split, cfg, first_epoch),
            validation_data=(public.x[..., None].astype("float32"), one_hot(public.y)),
            validation_batch_size=256,
            epochs=cfg.epochs,
            initial_epoch=first_epoch,
            callbacks=callbacks,
            verbose=0,
        )
    return run_dir
