"""Import TensorFlow without its start-up notices.

TensorFlow's C++ side prints oneDNN and CUDA notices ("oneDNN custom operations are on", "Could not find
cuda drivers", "failed call to cuInit", cuDNN/cuFFT/cuBLAS factory registrations) before its logging is
set up, so TF_CPP_MIN_LOG_LEVEL cannot silence them. They go to file descriptor 2 while TensorFlow loads
and looks for a GPU; that output is held back here and replayed without those lines. oneDNN stays on (it
is the fastest CPU path); TF_ENABLE_ONEDNN_OPTS=0 turns it off.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

NOTICES = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|Could not find cuda drivers"
    r"|failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered"
    r"|TF-TRT Warning|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions|rebuild TensorFlow with the appropriate compiler flags"
)


@contextlib.contextmanager
def held_back(fd: int, drop: Callable[[str], object]) -> Iterator[None]:
    """Hold back what is written to file descriptor ``fd`` (1 or 2) meanwhile, then replay it without the lines
    ``drop`` says yes to: C++ code writes to the descriptor directly, past Python's streams and logging."""
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines():
                if not drop(line):
                    print(line, file=stream)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (when installed) and list its GPUs with the start-up notices left out."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    with held_back(2, NOTICES.search):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
