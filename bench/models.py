"""``make bench``: every shipped model's accuracy and cost, side by side.

Each ``models/*.tflite`` is fed raw uint8 48x48 FER-2013 PublicTest pixels and read through its JSON
labels, exactly as the device does; latency is one inference on one thread (median of many) with the
LiteRT interpreter. PrivateTest is not scored here: a shipped model's number is the one its conversion
wrote into its sidecar (the protocol scores PrivateTest once per shipped model); other models show none.
Results go to bench/results-models.md (and .json); `make docs` copies the table into the docs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from convert.tflite import mirrored_scores, tflite_scores
from fer_edge.contract import Calibration, read_sidecar
from fer_edge.vision.calibration import calibrate, chance_calibration_error
from train import data
from train.evaluate import split_metrics

REPO = Path(__file__).resolve().parent.parent


def machine_description() -> str:
    """Processor and the int8 instructions that decide XNNPACK's speed (AVX-512 VNNI is many times AVX2's)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    except OSError:
        pass
    simd = [name for name in ("avx512_vnni", "avx_vnni", "avx512f", "avx2", "asimddp", "asimd") if name in flags][:2]
    simd_text = f" ({', '.join(simd)})" if simd else ""
    return f"{platform.machine()} {model}{simd_text}, Python {platform.python_version()}"


def latency_ms(model_path: Path, repeats: int = 300) -> float:
    from convert.tflite import make_interpreter

    interpreter = make_interpreter(model_path, threads=1)
    detail = interpreter.get_input_details()[0]
    face = np.random.default_rng(0).integers(0, 256, detail["shape"], dtype=np.uint8).astype(detail["dtype"])
    times = []
    for i in range(repeats + 20):
        interpreter.set_tensor(detail["index"], face)
        start = time.perf_counter()
        interpreter.invoke()
        if i >= 20:
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def shown_path(path: Path) -> str:
    """``path`` relative to the repository where it is inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def data_classes(labels: tuple[str, ...], scores: np.ndarray) -> np.ndarray:
    """The data set's class index of each row's top score in ``scores``, whose columns are ``labels``."""
    to_data_index = np.array([data.CLASS_NAMES.index(label) for label in labels])
    return to_data_index[scores.argmax(1)]


def chance_errors(
    model_path: Path, calibration: Calibration | None, faces: np.ndarray, single: np.ndarray
) -> dict[str, float]:
    """The ECE a perfectly calibrated model would show by chance, single and mirrored (``single``: the scores of
    ``faces``), on as many faces whose calibrated confidences are like these; empty without a calibration."""
    if calibration is None:
        return {}
    single, mirrored = mirrored_scores(model_path, faces, single)
    row = {}
    for key, scores, mirror in (("chance_ece", single, False), ("chance_mirror_ece", mirrored, True)):
        chance = chance_calibration_error(calibrate(scores, calibration.for_pass(mirror=mirror)))
        row[key], row[f"{key}_p90"] = chance.mean, chance.p90
    return row


def bench_model(model_path: Path, public: data.Split) -> dict:
    sidecar = read_sidecar(model_path)
    row = {
        "model": shown_path(model_path),
        "run": sidecar.source.get("run", "?"),
        "tta": sidecar.source.get("tta", "none"),
        "variant": sidecar.variant,
        "macs_m": sidecar.macs / 1e6,
        "params_m": sidecar.params / 1e6,
        "size_kb": model_path.stat().st_size / 1000,
    }
    scores = tflite_scores(model_path, public.x)
    metrics = split_metrics(public.y, data_classes(sidecar.labels, scores), data.CLASS_NAMES)
    row["public_accuracy"], row["public_macro_f1"] = metrics["accuracy"], metrics["macro_f1"]
    row["private_accuracy"] = sidecar.metrics.get("private_accuracy")
    row["private_macro_f1"] = sidecar.metrics.get("private_macro_f1")
    for key in (
        "private_mirror_accuracy",
        "private_ece",
        "private_ece_calibrated",
        "private_mirror_ece",
        "private_mirror_ece_calibrated",
    ):
        row[key] = sidecar.metrics.get(key)
    calibration = sidecar.calibration
    row["temperature"] = None if calibration is None else calibration.temperature
    row["temperature_mirror"] = None if calibration is None else calibration.temperature_mirror
    row["confidence_knots"] = 0 if calibration is None else len(calibration.confidence)
    row["confidence_knots_mirror"] = 0 if calibration is None else len(calibration.confidence_mirror)
    row.update(chance_errors(model_path, calibration, public.x, scores))
    row["ms_per_face"] = latency_ms(model_path)
    return row


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| run | file | PublicTest | PrivateTest | macro-F1 (Private) | MACs | params | size | ms/face (1 thread) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']}{' + flip TTA' if r['tta'] == 'flip' else ''} | `{r['model']}` | "
            f"{100 * r['public_accuracy']:.2f}% | {_share(r['private_accuracy'])} | "
            f"{_number(r['private_macro_f1'])} | {r['macs_m']:.1f}M | {r['params_m']:.2f}M | {r['size_kb']:.0f} kB | "
            f"{r['ms_per_face']:.2f} |"
        )
    return "\n".join(lines)


def _chance(row: dict, key: str) -> str:
    return "-" if row.get(key) is None else f"{100 * row[key]:.2f}% / {100 * row[f'{key}_p90']:.2f}%"


def calibration_table(rows: list[dict]) -> str:
    """Accuracy with the mirrored pass and the top-1 calibration error (15 bins) on PrivateTest, before and
    after the calibration fitted on PublicTest, beside the error a perfectly calibrated model shows by chance."""
    lines = [
        "| file | temperature (single / mirrored) | confidence map knots | PrivateTest mirrored "
        "| ECE Private single, raw -> calibrated | ECE Private mirrored, raw -> calibrated "
        "| by chance, single (mean / 90th pct) | by chance, mirrored |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        temperatures = "-" if r["temperature"] is None else f"{r['temperature']:g} / {r['temperature_mirror']:g}"
        knots = f"{r['confidence_knots']} / {r['confidence_knots_mirror']}"
        lines.append(
            f"| `{r['model']}` | {temperatures} | {knots} | {_share(r['private_mirror_accuracy'])} "
            f"| {_share(r['private_ece'])} -> {_share(r['private_ece_calibrated'])} "
            f"| {_share(r['private_mirror_ece'])} -> {_share(r['private_mirror_ece_calibrated'])} "
            f"| {_chance(r, 'chance_ece')} | {_chance(r, 'chance_mirror_ece')} |"
        )
    return "\n".join(lines)


def bench_parser(doc: str, models_help: str | None = None) -> argparse.ArgumentParser:
    """The arguments every benchmark takes; with ``models_help``, the models it scores and their data."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if models_help:
        parser.add_argument("models", nargs="*", help=models_help)
        parser.add_argument("--data", help="FER-2013 folder (default: $FER2013_DIR, then ../shared/fer2013)")
    # benchmarks write bench/results-* only (`make docs` copies them into the docs); the flag is accepted for
    # callers written when they also rewrote the docs
    parser.add_argument("--no-readme", action="store_true", help=argparse.SUPPRESS)
    return parser


def on_one_core() -> None:
    """Run on one core from here on, as a Pi busy with its camera and encoder gives the model."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def main(argv=None) -> int:
    args = bench_parser(__doc__, "default: models/*.tflite and runs/seed/tflite/fer_int8.tflite").parse_args(argv)
    on_one_core()
    paths = [Path(p) for p in args.models] or [
        *sorted((REPO / "models").glob("*.tflite")),
        *(REPO / "runs" / "seed" / "tflite").glob("fer_int8.tflite"),  # the origin's CNN, when trained
    ]
    root = data.resolve_data_dir(args.data)
    public = data.load_split(root, "public", REPO / "build" / "cache")
    rows = [bench_model(p, public) for p in paths]
    machine = machine_description()
    text = (
        f"{table(rows)}\n\n{calibration_table(rows)}\n\n"
        f"Measured by `make bench` on {time.strftime('%Y-%m-%d')} ({machine}, one core); "
        f"accuracy from raw uint8 pixels read through each model's JSON labels; PrivateTest is the number "
        f"written into a shipped model's sidecar when it was converted (not scored here); kB of 1000 bytes; "
        f"ms/face is the interpreter's invoke alone (median of 300), the device's crop, resize and read-out "
        f"come on top (`fer-edge bench` times the whole stage). The calibration table's PrivateTest numbers are "
        f"the sidecar's too: scored once when the calibration was fitted on PublicTest; the mirrored pass averages "
        f"the scores of the face and its mirror image (two invokes per face). By chance: the ECE a model whose "
        f"calibrated confidences were exactly right would still show on {len(public.y)} faces (PrivateTest has as "
        f"many), its mean and 90th percentile over 400 draws of faces with the calibrated confidences the model "
        f"gives PublicTest, each right with the probability it states.\n"
    )
    publish("models", text, rows, record=not args.models)
    return 0


def publish(name: str, text: str, results=None, *_docs, record: bool = True) -> None:
    """A benchmark's table to the console and, when it is the ``record`` (the shipped models, not models
    named on the command line), to bench/results-<name>.md (its numbers to .json). Tracked docs are never
    written here: ``make docs`` (tools/sync_docs.py) copies the results into them on request. Markers and
    doc names that older callers pass after ``results`` are ignored."""
    print(text)
    if not record:
        print(f"(models named on the command line: bench/results-{name}.* keep the shipped models' table)")
        return
    (REPO / "bench" / f"results-{name}.md").write_text(text)
    if results is not None:
        (REPO / "bench" / f"results-{name}.json").write_text(json.dumps(results, indent=2))
    print(f"wrote bench/results-{name}.md; `make docs` copies it into the docs")


if __name__ == "__main__":
    sys.exit(main())
