"""Evaluation reports of a run: metrics, per-class report, confusion matrices, learning curves.

Predictions and labels stay in the same order (the origin compared a shuffled generator's
predictions with unshuffled labels). Everything here is on PublicTest, where checkpoints and
candidates are chosen: PrivateTest is never loaded by training or its evaluation. It is scored once
per shipped model, for its int8 file, by the conversion (``convert/tflite.py``, ``--ship-as``).

``python -m train.evaluate RUN...`` (``make evaluate``) rewrites the reports of trained runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from train import data

log = logging.getLogger("train.evaluate")  # not __name__: that is __main__ under python -m train.evaluate


def split_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels) -> dict:
    """Accuracy, macro-F1, precision/recall/F1/support per class and the confusion matrix (rows: true class,
    columns: predicted), by scikit-learn; every class is listed, in label order, even one never predicted."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    classes = list(range(len(labels)))
    report = classification_report(
        y_true, y_pred, labels=classes, target_names=list(labels), output_dict=True, zero_division=0
    )
    per_class = {
        name: {
            "precision": round(report[name]["precision"], 4),
            "recall": round(report[name]["recall"], 4),
            "f1": round(report[name]["f1-score"], 4),
            "support": int(report[name]["support"]),
        }
        for name in labels
    }
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(report["macro avg"]["f1-score"]), 4),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def report_text(y_true: np.ndarray, y_pred: np.ndarray, labels, title: str) -> str:
    """scikit-learn's classification report (precision, recall, F1, support; accuracy; macro and weighted
    averages) under ``title``."""
    from sklearn.metrics import classification_report

    body = classification_report(
        y_true, y_pred, labels=list(range(len(labels))), target_names=list(labels), digits=4, zero_division=0
    )
    return f"{title}\n\n{body}"


def plot_confusion(cm: np.ndarray, labels, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    normalized = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, values, fmt, name in ((axes[0], cm, "d", "counts"), (axes[1], normalized, ".2f", "row-normalized")):
        ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(
                    j,
                    i,
                    format(values[i, j], fmt),
                    ha="center",
                    va="center",
                    color="white" if normalized[i, j] > 0.5 else "black",
                    fontsize=8,
                )
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} ({name})")
    fig.tight_layout()
    _save_figure(fig, path)


def plot_learning_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] + 1 for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key in ((axes[0], "accuracy"), (axes[1], "loss")):
        ax.plot(epochs, [row[key] for row in history], label=f"train {key} (augmented)")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], label=f"PublicTest {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from train.fit import write_atomically

    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)


def evaluate_run(run_dir: Path, data_dir=None, cache_dir="build/cache") -> dict:
    """Evaluate ``run_dir/best.keras`` on PublicTest and write every report file (never PrivateTest)."""
    import keras

    from train.fit import BEST, read_history, write_text_atomically

    run_dir = Path(run_dir)
    model = keras.models.load_model(run_dir / BEST)
    labels = json.loads((run_dir / "run.json").read_text())["labels"]
    public = data.load_split(data.resolve_data_dir(data_dir), "public", cache_dir)
    scores = model.predict(public.x[..., None].astype(np.float32), batch_size=256, verbose=0)
    predicted = scores.argmax(1)
    metrics = split_metrics(public.y, predicted, labels)
    # each report whole or not at all: a full disk leaves the previous one as it was
    write_text_atomically(
        run_dir / "report_public.txt", report_text(public.y, predicted, labels, f"PublicTest ({len(public)} images)")
    )
    write_text_atomically(run_dir / "per_class_public.json", json.dumps(metrics["per_class"], indent=2))
    plot_confusion(
        np.array(metrics["confusion_matrix"]), labels, run_dir / "confusion_public.png", f"{run_dir.name} PublicTest"
    )
    log.info("%s PublicTest: accuracy %.4f, macro-F1 %.4f", run_dir.name, metrics["accuracy"], metrics["macro_f1"])
    history = read_history(run_dir)
    if history:
        plot_learning_curves(history, run_dir / "learning_curves.png")
        write_text_atomically(run_dir / "history.json", json.dumps(history, indent=1))
        best_epoch = int(max(history, key=lambda row: row["val_accuracy"])["epoch"]) + 1
    else:
        best_epoch = None
    run_info = json.loads((run_dir / "run.json").read_text())
    summary = {
        "run": run_dir.name,
        "model": run_info.get("model"),
        "macs": run_info.get("macs"),
        "params": run_info.get("params"),
        "epochs_trained": len(history),
        "best_epoch_on_public": best_epoch,
        "public": {k: metrics[k] for k in ("accuracy", "macro_f1")},
    }
    write_text_atomically(run_dir / "metrics.json", json.dumps(summary, indent=2))
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["split", "accuracy", "macro_f1"])
    writer.writerow(["public", metrics["accuracy"], metrics["macro_f1"]])
    write_text_atomically(run_dir / "metrics.csv", table.getvalue())
    log.info(
        "wrote %s: report_public.txt, per_class_public.json, metrics.json, metrics.csv, confusion_public.png%s",
        run_dir,
        ", learning_curves.png, history.json" if history else "",
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folder holding best.keras and run.json")
    parser.add_argument("--data", help="FER-2013 folder or fer2013.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for run in map(Path, args.runs):
        for needed in ("best.keras", "run.json"):
            if not (run / needed).is_file():
                print(f"error: {run}/{needed} not found: train it first (make train)", file=sys.stderr)
                return 2
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        from train.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
    try:
        for run in args.runs:
            evaluate_run(Path(run), args.data)
    except data.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, an unwritable run folder
        print(f"error: {exc.filename}: {exc.strerror}" if exc.filename else f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
