"""Typed configs: frozen dataclasses of parameters with defaults, read from `key=value` text by each field's type
and round-tripped through JSON. An optimization's parameters and a runtime's options are both such configs."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self, get_args, get_origin

from engine.errors import UserError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class BadValue(ValueError):
    """A value its field cannot take: the message names both (`name=value is not <what the field takes>`)."""

    def __init__(self, name: str, value: object, takes: str) -> None:
        super().__init__(f"{name}={value} is not {takes}")
        self.name = name
        self.value = value
        self.takes = takes


def param(default: Any, help: str) -> Any:
    """A field with its default and a one-line help text (listed by `describe`)."""
    return dataclasses.field(default=default, metadata={"help": help})


def field_types(cls: type) -> dict[str, Any]:
    """Each field's resolved type hint, by name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _optional(hint: Any) -> Any | None:
    """The inner type of `X | None`, else None."""
    if get_origin(hint) in (types.UnionType, typing.Union) and type(None) in get_args(hint):
        return next(a for a in get_args(hint) if a is not type(None))
    return None


def _choices(choices: tuple[Any, ...]) -> str:
    return f"one of {', '.join(map(str, choices))}"


def coerce(owner: type, name: str, raw: str) -> Any:
    """The text `raw` as the type of `owner`'s field `name`; BadValue names the value when it is not one."""
    hint = field_types(owner)[name]
    if hint is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise BadValue(name, raw, "true or false")
    if get_origin(hint) is Literal:
        match = next((c for c in get_args(hint) if str(c).lower() == raw.lower()), None)
        if match is None:
            raise BadValue(name, raw, _choices(get_args(hint)))
        return match
    if get_origin(hint) is tuple:
        return tuple(v for v in raw.split("|") if v)
    inner = _optional(hint)
    if inner is not None and raw.lower() in ("none", "null", ""):
        return None
    convert = inner if inner is not None else hint
    if convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            raise BadValue(name, raw, f"a valid {getattr(hint, '__name__', hint)}") from None
    return raw


def _holds(hint: Any, value: Any) -> bool:
    """Whether `value` is of the field type `hint` (what JSON or code may hand a config)."""
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if get_origin(hint) is Literal:
        return value in get_args(hint)
    inner = _optional(hint)
    if inner is not None:
        return value is None or _holds(inner, value)
    return True  # other types are the config's own __post_init__'s to check


def _takes(hint: Any) -> str:
    if hint is bool:
        return "true or false"
    if get_origin(hint) is Literal:
        return _choices(get_args(hint))
    return f"a valid {getattr(hint, '__name__', hint)}"


def check_types(config: Any) -> None:
    """Every field holds a value of its type; BadValue names the first that does not."""
    for name, hint in field_types(type(config)).items():
        value = getattr(config, name)
        if not _holds(hint, value):
            raise BadValue(name, value, _takes(hint))


def to_text(value: Any) -> str:
    """A value as its `key=value` text: the inverse of `coerce`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "|".join(str(v) for v in value)
    return str(value)


def describe(cls: type) -> dict[str, str]:
    """Each field's help text with its choices and its default, by name."""
    out = {}
    for f in dataclasses.fields(cls):
        hint = field_types(cls)[f.name]
        text = f.metadata.get("help", f.name)
        if get_origin(hint) is Literal:
            *head, last = map(str, get_args(hint))
            text += f": {', '.join(head)} or {last}" if head else f": {last}"
        out[f.name] = text if f.default is dataclasses.MISSING else f"{text} (default {to_text(f.default) or 'empty'})"
    return out


@dataclass(frozen=True)
class Config:
    """Base of a typed config: frozen, validated in __post_init__ (ValueError naming the value), JSON round-tripping."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def _refuse_unknown(cls, names: typing.Iterable[str]) -> None:
        known = cls.field_names()
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise UserError(f"unknown parameter(s) {unknown}; known: {sorted(known)}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        cls._refuse_unknown(data)
        hints = field_types(cls)
        # JSON has no tuples: turn lists back into the tuples the fields hold, so equality and names survive
        values = {k: tuple(v) if isinstance(v, list) and get_origin(hints[k]) is tuple else v for k, v in data.items()}
        return cls(**values)

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> Self:
        """From `{name: text}` (a command line's `key=value`s), each text read by its field's type."""
        cls._refuse_unknown(raw)
        return cls(**{name: coerce(cls, name, text.strip()) for name, text in raw.items()})
