"""The TFLite runtime: which interpreter library runs the models, one interpreter built once per model file
(from its bytes), and the conversions between pixels, quantized tensors and float scores.

The classifier, the face detector and the workstation's conversion checks all load models through here, so
there is one place that picks LiteRT, tflite-runtime or TensorFlow, and one reading of a model's input and
output quantization.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np

from fer_edge.errors import FerEdgeError, ModelError

log = logging.getLogger(__name__)

# In order of preference: ai-edge-litert is tflite-runtime's successor (tflite-runtime ends at 2.14 and breaks
# under NumPy 2); full TensorFlow is the workstation fallback, never needed on the Pi.
RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


def load_interpreter_class() -> tuple[Any, str]:
    """The ``Interpreter`` class of the first runtime that imports, and the runtime's module name."""
    for name in RUNTIMES:
        try:
            if name == "tensorflow.lite":
                # The importable tensorflow.lite package lacks Interpreter; the public one is tf.lite.
                return importlib.import_module("tensorflow").lite.Interpreter, name
            return importlib.import_module(name).Interpreter, name
        except ImportError:
            continue
    raise ModelError(f"no TFLite runtime found (tried {', '.join(RUNTIMES)}); pip install ai-edge-litert")


def build_interpreter(
    model_bytes: bytes, threads: int, what: str, error: type[FerEdgeError] = ModelError
) -> tuple[Any, str]:
    """An allocated interpreter for a model held in memory, and the runtime's name. From bytes, not a path: the
    runtime would map the file, and a model copied over it in place would then kill the process with SIGBUS
    at the next inference. ``what`` names the model in the one-line ``error`` raised when it does not load."""
    interpreter_class, runtime = load_interpreter_class()
    try:
        interpreter = interpreter_class(model_content=model_bytes, num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise error(f"{what}: not a loadable TFLite model ({first_line(exc)})") from None
    return interpreter, runtime


def pixel_lut(input_detail: dict) -> np.ndarray:
    """Pixel value 0-255 -> the model's input value: quantized per the input's scale and zero point, or the
    plain value for float models (they rescale inside the graph)."""
    dtype = input_detail["dtype"]
    scale, zero_point = input_detail["quantization"]
    if np.issubdtype(dtype, np.floating) or scale <= 0:
        return np.arange(256).astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(np.arange(256) / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, output_detail: dict) -> np.ndarray:
    """A raw output tensor as float32 scores."""
    scale, zero_point = output_detail["quantization"]
    if scale > 0:
        return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32)


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (the runtimes' errors run to many)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
