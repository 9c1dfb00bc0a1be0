"""The one config builder behind the device's and the workstation's configs."""

from dataclasses import dataclass, field

import pytest

from fer_edge.config.builder import build_dataclass
from fer_edge.errors import ConfigError


def _positive(value):
    return None if value > 0 else "expected a positive number"


@dataclass(frozen=True)
class Inner:
    rate: float = field(default=1.0, metadata={"check": _positive})
    colour: tuple[int, int, int] = (0, 0, 0)
    mode: str = field(default="on", metadata={"check": lambda v: None if v in ("on", "off") else "on or off"})


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    limit: int | None = None
    teachers: tuple[str, ...] = ()
    inner: Inner = field(default_factory=Inner)
    students: dict[str, Inner] = field(default_factory=dict)


def test_values_are_converted_and_sections_built():
    cfg = build_dataclass(
        Outer,
        {"teachers": ["a", "b"], "inner": {"rate": 2, "colour": [1, 2, 3], "mode": False}, "students": {"s": None}},
    )
    assert cfg.teachers == ("a", "b") and cfg.inner == Inner(2.0, (1, 2, 3), "off")
    assert cfg.students == {"s": Inner()} and build_dataclass(Outer, {"inner": None}).inner == Inner()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"inner": {"rat": 1}}, r"^inner\.rat: unknown key \(known: rate, colour, mode\)$"),
        ({"inner": {"rate": -1}}, r"^inner\.rate: expected a positive number, got -1$"),
        ({"inner": {"rate": True}}, r"^inner\.rate: expected a number, got True$"),
        ({"inner": {"colour": [1, 2]}}, r"^inner\.colour: expected a list of 3 integers, got \[1, 2\]$"),
        ({"teachers": ["a", 1]}, r"^teachers: expected a list of strings, got \['a', 1\]$"),
        ({"limit": "ten"}, r"^limit: expected an integer or null, got 'ten'$"),
        ({"students": {"s": {"mode": "auto"}}}, r"^students\.s\.mode: on or off, got 'auto'$"),
        ({"students": ["s"]}, r"^students: expected a mapping of names to Inners, got \['s'\]$"),
        ({"inner": "fast"}, r"^inner: expected a mapping, got 'fast'$"),
    ],
)
def test_each_problem_is_one_line_naming_its_key_path(raw, message):
    with pytest.raises(ConfigError, match=message):
        build_dataclass(Outer, raw)


def test_a_renamed_key_names_its_replacement():
    with pytest.raises(ConfigError, match=r"^inner\.speed: replaced by inner\.rate$"):
        build_dataclass(Outer, {"inner": {"speed": 3}}, renamed={"inner.speed": "inner.rate"})


def test_the_device_and_training_configs_share_the_builder():
    import fer_edge.config.device
    import train.config

    assert fer_edge.config.device.build_dataclass is train.config.build_dataclass is build_dataclass
