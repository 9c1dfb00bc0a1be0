"""What a training run says while it runs: progress within each epoch and a plain estimate of the whole run.

A CPU epoch of the default config takes many minutes, so besides the per-epoch line (``fit.EpochLog``) the
run prints a line every ``every_s`` seconds within the epoch, and once the first batches are timed, how
long the whole run will take on this machine.
"""

from __future__ import annotations

import logging
import time

import keras

log = logging.getLogger("train.fit")

GPU_ALTERNATIVE = "tools/train_gpu.sh SECONDS OUT CONFIG (Keras on a GPU; docs/TRAINING.md)"


def format_duration(seconds: float) -> str:
    """``seconds`` as people say it: "1 d 10 h", "3 h 05 min", "4 min 10 s", "12 s" (no wrap at 24 h)."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


class BatchProgress(keras.callbacks.Callback):
    """A line every ``every_s`` seconds within an epoch (batch, images/s, the epoch's end), and after the
    first ``estimate_after`` batches past the first (which compiles), the whole run's estimate."""

    def __init__(
        self,
        epochs: int,
        first_epoch: int,
        steps: int,
        batch_size: int,
        on_gpu: bool,
        every_s: float = 30.0,
        estimate_after: int = 10,
        epochs_now=None,
    ):
        super().__init__()
        self.first, self.steps, self.batch_size, self.on_gpu = first_epoch, steps, batch_size, on_gpu
        self.every_s, self.estimate_after = every_s, estimate_after
        self.epochs_now = epochs_now or (lambda: epochs)  # a time budget may fix the count later
        self.timed_from: tuple[float, int] | None = None
        self.estimated: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_started = self.last_line = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        done = batch + 1
        if self.timed_from is None:
            self.timed_from = (now, done)  # the first batch compiles: time the ones after it
            return
        if self.estimated is None and done - self.timed_from[1] >= self.estimate_after:
            self.estimated = self.estimate(now, done)
        if now - self.last_line >= self.every_s:
            self.last_line = now
            rate = done * self.batch_size / (now - self.epoch_started)
            left = (self.steps - done) * (now - self.epoch_started) / done
            log.info(
                "epoch %d/%d  batch %d/%d  %.0f images/s  epoch ends in %s",
                self.epoch + 1,
                self.epochs_now(),
                done,
                self.steps,
                rate,
                format_duration(left),
            )

    def estimate(self, now: float, done: int) -> float:
        """Log and return the whole run's expected seconds from the batches timed so far."""
        assert self.timed_from is not None  # set by the first batch, before any estimate
        start, start_done = self.timed_from
        per_batch = (now - start) / (done - start_done)
        batches_left = (self.steps - done) + self.steps * (self.epochs_now() - self.epoch - 1)
        total = per_batch * batches_left
        where = "on this machine's GPU" if self.on_gpu else "on this machine (no GPU found)"
        log.info(
            "estimate: this run needs about %s more %s: %.2f s per batch of %d, %d batches per epoch, "
            "%d epochs, plus a PublicTest check per epoch",
            format_duration(total),
            where,
            per_batch,
            self.batch_size,
            self.steps,
            self.epochs_now() - self.first,
        )
        if not self.on_gpu and total > 4 * 3600:
            log.info("on a GPU machine: %s; a CPU-sized config: configs/train-fast-refine.yaml", GPU_ALTERNATIVE)
        return total
