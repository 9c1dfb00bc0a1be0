"""The YAML side of a config file, shared by the device's config (``fer_edge.config``) and the workstation's
(``train.config``): read the top-level mapping and apply dotted overrides, one ConfigError line per problem.
Imports YAML alone, so that a training machine needs nothing else of fer_edge.

A config is read as root by the installer, so what is parsed is bounded: the file's size, and the number of
values its aliases expand to (a few hundred bytes of nested aliases otherwise expand to billions)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from fer_edge.errors import ConfigError, mask_credentials

MAX_CONFIG_BYTES = 1_000_000  # a full config is a few kB
MAX_CONFIG_VALUES = 10_000  # nodes once every alias is expanded; a full config has a few hundred
MAX_SHOWN_CHARS = 80  # of a value quoted in an error line

# YAML 1.2 floats: PyYAML follows YAML 1.1, where an exponent needs a dot (1.0e+9) and `1e9` is a string.
_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 exponent floats (``1e9``) as numbers."""


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789"))


def read_mapping(path: str | os.PathLike, what: str) -> dict:
    """The mapping at the top of the YAML file ``path`` (an empty file is ``{}``); ``what`` names its values."""
    try:
        text = _read_bounded(Path(path))
        loader = _ConfigLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expanded_size(path, node)
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
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


def _read_bounded(path: Path) -> str:
    """The file's text, refused past MAX_CONFIG_BYTES before it is read whole (st_size first; a FIFO or a
    device such as /dev/zero reports 0, so the read itself stops one byte past the bound as well)."""
    if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes, more than a config can be ({MAX_CONFIG_BYTES})")
    with open(path, "rb") as file:
        data = file.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES} bytes, more than a config can be")
    return data.decode("utf-8")


def _check_expanded_size(path, root: yaml.Node) -> None:
    """Refuse a document whose aliases expand to more than MAX_CONFIG_VALUES nodes, or that contains itself.
    Each node's expanded size is computed once, so the check costs the size of the file, not of the expansion."""
    sizes: dict[int, int] = {}
    started: set[int] = set()
    stack = [root]
    while stack:
        node = stack[-1]
        if id(node) in sizes:
            stack.pop()
            continue
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        else:
            sizes[id(node)] = 1
            stack.pop()
            continue
        if id(node) not in started:
            started.add(id(node))
            for child in children:
                if id(child) in started and id(child) not in sizes:
                    raise ConfigError(f"{path}: not valid YAML (a value contains itself through an alias)")
                if id(child) not in sizes:
                    stack.append(child)
            continue
        stack.pop()
        sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[id(node)] > MAX_CONFIG_VALUES:
            raise ConfigError(f"{path}: expands to more than {MAX_CONFIG_VALUES} values (aliases nested in aliases?)")


def shown(value) -> str:
    """``repr(value)`` for an error line, cut to MAX_SHOWN_CHARS, with no URL's password."""
    text = mask_credentials(repr(value))
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


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
                raise ConfigError(f"{'.'.join(parents[: depth + 1])}: expected a mapping, got {shown(node)}")
        node[last] = value
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where the parser gave up, and why (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = ": ".join(part for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    if mark is None or not what:
        return " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
