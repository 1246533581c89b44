"""The typed-config converter that optimizations and runtimes share (engine/config.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from engine.config import BadValue, Config, check_types, coerce, describe, param, to_text
from engine.errors import UserError


@dataclass(frozen=True)
class Toy(Config):
    on: bool = param(True, "a switch")
    count: int = param(3, "how many")
    ratio: float = param(0.5, "how much")
    mode: Literal["fast", "slow"] = param("fast", "how")
    names: tuple[str, ...] = param((), "which, joined with |")
    limit: int | None = param(None, "at most, or none")

    def __post_init__(self) -> None:
        check_types(self)


@pytest.mark.parametrize(("name", "raw", "value"), [
    ("on", "yes", True), ("on", "OFF", False), ("on", "1", True), ("count", "7", 7), ("ratio", "0.25", 0.25),
    ("mode", "SLOW", "slow"), ("names", "a|b|", ("a", "b")), ("limit", "none", None), ("limit", "4", 4),
])
def test_text_becomes_the_fields_type(name: str, raw: str, value: Any) -> None:
    assert coerce(Toy, name, raw) == value
    if name != "limit":
        assert coerce(Toy, name, to_text(value)) == value  # to_text is the inverse


@pytest.mark.parametrize(("name", "raw", "message", "takes"), [
    ("on", "maybe", "on=maybe is not true or false", "true or false"),
    ("count", "2.5", "count=2.5 is not a valid int", "a valid int"),
    ("ratio", "half", "ratio=half is not a valid float", "a valid float"),
    ("mode", "medium", "mode=medium is not one of fast, slow", "one of fast, slow"),
])
def test_a_bad_text_names_the_value_and_what_the_field_takes(name: str, raw: str, message: str, takes: str) -> None:
    with pytest.raises(BadValue, match=f"^{message}$") as caught:
        coerce(Toy, name, raw)
    assert (caught.value.name, caught.value.value, caught.value.takes) == (name, raw, takes)
    with pytest.raises(BadValue, match=f"^{message}$"):
        Toy.parse({name: raw})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"on": "yes"}, "on=yes is not true or false"),
    ({"count": True}, "count=True is not a valid int"),
    ({"ratio": "1"}, "ratio=1 is not a valid float"),
    ({"mode": "medium"}, "mode=medium is not one of fast, slow"),
    ({"limit": 1.5}, "limit=1.5 is not a valid int | None"),
])
def test_check_types_refuses_values_of_another_type(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(BadValue, match=f"^{message}$"):
        Toy(**kwargs)


def test_json_round_trip_and_unknown_names() -> None:
    toy = Toy(on=False, count=1, ratio=0.1, mode="slow", names=("x", "y"), limit=2)
    assert Toy.from_json(json.loads(json.dumps(toy.to_json()))) == toy  # tuples come back as tuples
    assert Toy.parse({"on": "false", "names": "x|y"}) == Toy(on=False, names=("x", "y"))
    with pytest.raises(UserError, match=r"unknown parameter\(s\) \['bogus'\]; known: \['count', 'limit', "):
        Toy.from_json({"bogus": 1})
    with pytest.raises(UserError, match="unknown parameter"):
        Toy.parse({"bogus": "1"})


def test_describe_lists_help_choices_and_defaults_in_field_order() -> None:
    assert describe(Toy) == {
        "on": "a switch (default true)", "count": "how many (default 3)", "ratio": "how much (default 0.5)",
        "mode": "how: fast or slow (default fast)", "names": "which, joined with | (default empty)",
        "limit": "at most, or none (default None)"}
