"""What a long training run says while it runs: progress within an epoch, the whole run's estimate."""

import logging

import pytest

from train import progress
from train.progress import BatchProgress, format_duration


@pytest.mark.parametrize(
    "seconds, shown",
    [
        (12.4, "12 s"),
        (250, "4 min 10 s"),
        (3 * 3600 + 5 * 60, "3 h 05 min"),
        (34 * 3600 + 20 * 60, "1 d 10 h"),
        (25 * 3600, "1 d 1 h"),
        (-3, "0 s"),
    ],
)
def test_durations_read_plainly_and_do_not_wrap_at_a_day(seconds, shown):
    assert format_duration(seconds) == shown


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_cpu_run_shows_progress_within_the_epoch_and_estimates_the_whole_run(monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    callback = BatchProgress(epochs=200, first_epoch=0, steps=225, batch_size=128, on_gpu=False, estimate_after=20)
    caplog.set_level(logging.INFO, logger="train.fit")
    callback.on_epoch_begin(0)
    clock.now += 20  # the first batch compiles
    callback.on_train_batch_end(0)
    for batch in range(1, 40):
        clock.now += 2.7  # seconds per batch of 128 on two cores
        callback.on_train_batch_end(batch)
    lines = [r.getMessage() for r in caplog.records]
    estimate = next(line for line in lines if line.startswith("estimate:"))
    # 225 * 200 batches, 21 done, 2.7 s each
    assert f"about {format_duration((225 * 200 - 21) * 2.7)} more on this machine (no GPU found):" in estimate
    assert "1 d 9 h" in estimate
    assert any("tools/train_gpu.sh" in line for line in lines)
    within = [line for line in lines if line.startswith("epoch 1/200  batch ")]
    assert within[0].startswith("epoch 1/200  batch 5/225  ")  # 30 s after the epoch began
    assert all("images/s" in line and "epoch ends in" in line for line in within)
    assert len(within) == 3  # one line per 30 s of 20 + 39 * 2.7 s


def test_a_gpu_run_names_no_alternative(monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    callback = BatchProgress(epochs=100, first_epoch=0, steps=50, batch_size=128, on_gpu=True, estimate_after=5)
    caplog.set_level(logging.INFO, logger="train.fit")
    callback.on_epoch_begin(0)
    for batch in range(10):
        clock.now += 0.05
        callback.on_train_batch_end(batch)
    lines = [r.getMessage() for r in caplog.records]
    assert any("on this machine's GPU" in line for line in lines)
    assert not any("train_gpu.sh" in line for line in lines)
