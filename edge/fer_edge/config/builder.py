"""The config builder shared by the device's config (``fer_edge.config``) and the workstation's (``train.config``):
read the top-level mapping, apply dotted overrides and build frozen dataclasses from it, rejecting unknown keys, with
one ConfigError line per problem that names the key path. Imports YAML alone, so that a training machine needs
nothing else of fer_edge.

A dataclass field may carry a value check in its metadata (``field(metadata={"check": check})``, where
``check(value)`` returns a message or None); checks that span fields belong in the dataclass's ``__post_init__``.

A config is read as root by the installer, so what is parsed is bounded: the file's size, and the number of
values its aliases expand to (a few hundred bytes of nested aliases otherwise expand to billions)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
                _check_repeated_keys(path, node)
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


def _check_expanded_size(path: str | os.PathLike, root: yaml.Node) -> None:
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


def shown(value: object) -> str:
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


def _check_repeated_keys(path: str | os.PathLike, root: yaml.Node) -> None:
    """Refuse a key given twice in one mapping. YAML keeps the last: a second ``privacy:`` section appended
    further down would silently drop the first one's settings, ``mode: blur`` among them. A merge (``<<``)
    may still be overridden key by key; that is what it is for."""
    visited: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, where = stack.pop()
        if id(node) in visited:  # an alias: checked where it was defined
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack += [(child, f"{where}[{index}]") for index, child in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                key_path = f"{where}.{key.value}" if where else str(key.value)
                if key.value in first_line:
                    raise ConfigError(
                        f"{path}: line {key.start_mark.line + 1}: {key_path} given again (first on line "
                        f"{first_line[key.value]}); YAML would keep only the last"
                    )
                first_line[key.value] = key.start_mark.line + 1
                stack.append((value, key_path))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where the parser gave up, and why (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = ": ".join(part for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    if mark is None or not what:
        return " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"


# --- mappings into frozen dataclasses ------------------------------------------------------------


def build_dataclass(cls: Any, raw: Any, path: str = "", *, renamed: Mapping[str, str] | None = None) -> Any:
    """``cls(**raw)`` with every value converted to its field's type and checked, sections built recursively.

    ``path`` is the key path of ``raw`` in the file ("" at the top); ``renamed`` maps key paths of earlier versions
    to what replaced them, so that an upgraded config names its way forward. A section given as null (``source:``
    alone) takes its defaults.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {shown(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            if renamed and renamed.get(where):
                raise ConfigError(f"{where}: replaced by {renamed[where]}")
            raise ConfigError(f"{where}: unknown key (known: {', '.join(fields)})")
    values = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = build_dataclass(hint, {} if value is None else value, key_path, renamed=renamed)
            continue
        if typing.get_origin(hint) is dict and dataclasses.is_dataclass(item := typing.get_args(hint)[1]):
            if not isinstance(value, dict):
                what = getattr(item, "__name__", "section")
                raise ConfigError(f"{key_path}: expected a mapping of names to {what}s, got {shown(value)}")
            values[key] = {
                str(name): build_dataclass(item, {} if entry is None else entry, f"{key_path}.{name}", renamed=renamed)
                for name, entry in value.items()
            }
            continue
        check = fields[key].metadata.get("check")
        if value is False and hint is str and check is not None and check("off") is None:
            value = "off"  # YAML 1.1 reads an unquoted off as false
        converted = _convert(hint, value, key_path)
        if check is not None and converted is not None:
            problem = check(converted)
            if problem:
                raise ConfigError(f"{key_path}: {problem}, got {shown(value)}")
        values[key] = converted
    return cls(**values)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _describe(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is dict or typing.get_origin(hint) is dict:
        return "a mapping"
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if len(items) == 2 and items[1] is Ellipsis:
            return f"a list of {_describe(items[0]).split(' ', 1)[1]}s"
        return f"a list of {len(items)} {_describe(items[0]).split(' ', 1)[1]}s"
    return _NAMES.get(hint, str(hint))


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


_NO_MATCH = object()


def _scalar(kind: Any, value: Any) -> Any:
    """``value`` as ``kind`` (bool, int, float, str, None, dict), or _NO_MATCH; true is never a number."""
    if kind is type(None):
        return None if value is None else _NO_MATCH
    if kind is bool or isinstance(value, bool):
        return value if kind is bool and isinstance(value, bool) else _NO_MATCH
    if kind is float and isinstance(value, (int, float)) and _finite(value):
        return float(value)
    if kind in (int, str, dict) and isinstance(value, kind):
        return value
    return _NO_MATCH


def _convert(hint: Any, value: Any, key_path: str) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in allowed:
        if typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)):
            items = typing.get_args(kind)
            if len(items) == 2 and items[1] is Ellipsis:
                items = (items[0],) * len(value)
            if len(value) == len(items):
                converted = tuple(_scalar(item, v) for item, v in zip(items, value, strict=True))
                if _NO_MATCH not in converted:
                    return converted
            continue
        converted = _scalar(kind, value)
        if converted is not _NO_MATCH:
            return converted
    raise ConfigError(f"{key_path}: expected {_describe(hint)}, got {shown(value)}")
