"""Expected failures: each carries one line for the operator. The CLI prints it and exits non-zero."""

from __future__ import annotations

import re


class FerEdgeError(Exception):
    """Base of every expected fer-edge failure (bad config, missing model, camera gone, disk full)."""

    exit_code = 1


class ConfigError(FerEdgeError):
    """The configuration is invalid; the message starts with the key path."""

    exit_code = 2


class SourceError(FerEdgeError):
    """A frame source cannot be opened (no camera, unreadable file, empty folder)."""


class ModelError(FerEdgeError):
    """The model cannot be loaded or disagrees with its sidecar."""


class DetectorError(FerEdgeError):
    """The face detector cannot be built (e.g. no Haar cascade found)."""


class RecordingError(FerEdgeError):
    """Recording failed (disk full, output folder not writable)."""


_URL_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*):[^\s/]*@")


def mask_credentials(text: str) -> str:
    """``text`` with the password of every URL in it replaced: ``rtsp://user:***@host/stream``. For every line
    that shows a camera URL: error lines, logs and the status line any user sees in ``systemctl status``."""
    return _URL_CREDENTIALS.sub(r"\1:***@", text)
