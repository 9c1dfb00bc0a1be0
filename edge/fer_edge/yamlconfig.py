"""The YAML side of a config file, shared by the device's config (``fer_edge.config``) and the workstation's
(``train.config``): read the top-level mapping and apply dotted overrides, one ConfigError line per problem.
Imports YAML alone, so that a training machine needs nothing else of fer_edge."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from fer_edge.errors import ConfigError


def read_mapping(path: str | os.PathLike, what: str) -> dict:
    """The mapping at the top of the YAML file ``path`` (an empty file is ``{}``); ``what`` names its values."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of {what}, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict, overrides: dict | None) -> dict:
    """Set each dotted key of ``overrides`` (``{"source.path": ...}``) in ``raw``, making mappings on the way."""
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for depth, part in enumerate(parents):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parents[: depth + 1])}: expected a mapping, got {node!r}")
        node[last] = value
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where the parser gave up, and why (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = ": ".join(part for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    if mark is None or not what:
        return " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
