"""The values users write, parsed and formatted in one place: numbers and UTDs (3, 5e-4, 1/512),
a config field's declared type, and YAML files whose keys are checked.

Shared by the run config (pql_jax.config), sweep and workflow files and the scaling CLI, so that
a UTD reads and prints the same everywhere; every failure is a one-line UserError.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from pql_jax.errors import UserError


#: The forms a number or UTD may take, named in every error about one.
NUMBER_FORMS = "write e.g. 0.25, 5e-4, 1/4 or 1:4"


def parse_number(text: Any) -> float:
    """Parse 3, '5e-4', '1/512', '1:512' (a ratio, as run names print UTDs) or '1e-3/2' as a
    float; raise ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"not a number: {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text).strip()
    if ":" in text and "/" not in text:  # 1:16 is 1/16 (1:2:3 and 1/2:3 stay errors)
        text = text.replace(":", "/", 1)
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            if "/" in den:  # Fraction would read 1/2/3 as 1/(2/3)
                raise ValueError(f"not a number: {text!r}")
            return float(Fraction(num.strip())) / float(Fraction(den.strip()))
        return float(text)
    except ZeroDivisionError:
        raise ValueError(f"not a number: {text!r}") from None


def read_number(text: Any) -> float:
    """A number users wrote ('0.5', '1e-3', '1/65536', 3): `parse_number`, but a UserError naming
    the text for anything else, also for the words 'nan' and 'inf'."""
    try:
        v = parse_number(text)
    except (ValueError, TypeError, OverflowError):
        raise UserError(f"not a number: {text!r} ({NUMBER_FORMS})") from None
    if isinstance(text, str) and not math.isfinite(v):
        raise UserError(f"not a number: {text!r} ({NUMBER_FORMS})")
    return v


def read_numbers(text: str) -> list[float]:
    """A comma-separated list of `read_number`s ('500,950', '1/4,1/2')."""
    return [read_number(t) for t in str(text).split(",") if t.strip()]


def parse_utd(value: Any, where: str = "utd") -> float:
    """A UTD from 1/512, 1:512, '0.25' or 2: a finite float > 0, else UserError naming `where`
    and the accepted forms."""
    try:
        v = parse_number(value)
    except (ValueError, TypeError, OverflowError):
        raise UserError(f"{where}: not a UTD: {value!r} ({NUMBER_FORMS})") from None
    if not (math.isfinite(v) and v > 0):
        raise UserError(f"{where}: UTD must be a finite number > 0, got {value!r} ({NUMBER_FORMS})")
    return v


def format_utd(value: float) -> str:
    """A UTD as configs and tables write it: exact fractions stay fractions (1/512, 3/64, 2)."""
    value = float(value)
    frac = Fraction(value).limit_denominator(1 << 20)
    if value > 0 and abs(float(frac) - value) <= 1e-12 * value:
        return f"{frac.numerator}/{frac.denominator}" if frac.denominator != 1 else str(frac.numerator)
    return repr(value)


def check_choice(key: str, value: Any, annotation: Any) -> None:
    """UserError unless `value` is one of a Literal[...] annotation's values (no-op for other types)."""
    if typing.get_origin(annotation) is not typing.Literal:
        return
    choices = typing.get_args(annotation)
    if value not in choices:
        listed = ", ".join(map(str, choices[:-1])) + " or " + str(choices[-1])
        raise UserError(f"{key} must be {listed} (got {value!r})")


class Options(Mapping):
    """An immutable, hashable mapping of option names to scalar values (`env.options`), so that a
    config holding one stays a frozen, hashable dataclass (it keys compiled programs). Values are
    kept as YAML would read them, so `8` from a file and `8` from the command line are equal;
    their types are checked by whoever owns the options (pql_jax.envs.families)."""

    def __init__(self, items: Any = ()):
        items = dict(items)
        self._items = tuple(sorted((str(k), v) for k, v in items.items()))

    def __getitem__(self, key: str) -> Any:
        return dict(self._items)[key]

    def __iter__(self):
        return iter(k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return f"Options({dict(self._items)!r})"


def read_options(key: str, value: Any) -> Options:
    """`value` (a mapping, or its YAML text from the command line) as Options; scalar values only,
    strings read as YAML scalars (`8` -> 8) so both spellings of a value are equal."""
    if isinstance(value, str):
        try:
            value = load_yaml(value) if value.strip() else {}
        except yaml.YAMLError:
            raise UserError(f"config key {key}: {value!r} is not a mapping such as {{contacts: self}}")
    if not isinstance(value, Mapping):
        raise UserError(f"config key {key}: {value!r} is not a mapping such as {{contacts: self}}")
    return Options({name: read_scalar(f"{key}.{name}", v) for name, v in value.items()})


def read_scalar(key: str, value: Any) -> Any:
    """A YAML scalar (str, int, float, bool); a string is read as YAML would read it."""
    if isinstance(value, str):
        try:
            value = load_yaml(value) if value.strip() else value
        except yaml.YAMLError:
            return value
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise UserError(f"config key {key}: {value!r} is not a single value")
    return value


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML or command-line value to the field's declared type, or raise UserError."""
    hint = typing.get_origin(annotation) or annotation
    if hint is typing.Literal:  # the field's allowed values, declared once in its annotation
        check_choice(key, value, annotation)
        return value
    try:
        if annotation is bool or annotation == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if annotation is int or annotation == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            text = str(value).strip()
            if text.lstrip("+-").isdigit():  # exact, also beyond 2**53
                return int(text)
            number = parse_number(text) if isinstance(value, str) else float(value)
            if not math.isfinite(number) or number != int(number):
                raise ValueError
            return int(number)
        if annotation is float or annotation == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(parse_number(value) if isinstance(value, str) else value)
        if annotation is str or annotation == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if annotation is Options or annotation == "Options":
            return read_options(key, value)
        if hint is tuple or str(annotation).startswith("tuple"):
            if isinstance(value, str):
                value = load_yaml(value) if value.strip() else []
            if value is None:
                value = []
            if not isinstance(value, (list, tuple)):
                value = [value]
            return tuple(coerce(key, v, int) for v in value)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        pass
    else:
        raise UserError(f"config key {key}: unsupported type {annotation}")
    raise UserError(f"config key {key}: {value!r} is not a valid {getattr(annotation, '__name__', annotation)}")


class _Loader(yaml.SafeLoader):
    """YAML's safe loader without base-60 numbers: YAML 1.1 reads `1:16` (a UTD as run names and
    tables print it) as the integer 76; here it stays the string '1:16', which `parse_number`
    reads as 1/16 wherever a number is expected."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in "-+0123456789":
    _Loader.yaml_implicit_resolvers.setdefault(_ch, []).insert(
        0, ("tag:yaml.org,2002:str", re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` of ``text``, but `1:16` stays a string (``_Loader``)."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parsed YAML of `path` ({} when empty); UserError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}")


def check_mapping(value: Any, allowed: tuple[str, ...], what: str) -> dict:
    """`value` ({} when None) as a mapping whose keys are all in `allowed`; UserError otherwise."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise UserError(f"{what} must be a mapping with keys {', '.join(allowed)}")
    unknown = sorted(set(value) - set(allowed), key=str)
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} in {what}; known: {', '.join(allowed)}")
    return value


def read_mapping(path: str | Path, allowed: tuple[str, ...], what: str) -> dict:
    """A YAML file holding a mapping with known keys only (sweep and workflow files)."""
    return check_mapping(read_yaml(path, what), allowed, f"{what} {path}")
