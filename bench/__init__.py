"""Benchmarks: `make bench` (bench.models, bench.robustness) and `make bench-edge` (bench.edge).

They all load TensorFlow; it is loaded here first, without its C++ start-up notices (train/quiet.py).
"""

from train.quiet import import_tensorflow_quietly

import_tensorflow_quietly()
