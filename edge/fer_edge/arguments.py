"""Argument types shared by the command line's subcommands (``fer-edge`` and ``python -m fer_edge.analysis.report``)."""

from __future__ import annotations

import argparse


def given(value: str) -> str:
    """An option's value that says something: ``--source ""`` (an unset shell variable) would otherwise fall back
    to the default and open camera 0, ``--model ""`` the bundled model, ``report -o ""`` write to the current
    folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a value, got an empty string")
    return value
