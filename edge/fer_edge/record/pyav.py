"""PyAV (FFmpeg), imported on first use: the one place fer_edge imports it, so a run without video never loads it."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def pyav() -> Any:
    import av

    return av
