"""Typed configuration: dataclasses loaded from YAML, overridable as ``a.b=value``.

One schema serves YAML files, the command line and Python. Every key is checked against the
dataclass it lands in: an unknown key (with the closest known ones: "did you mean") or a value of
the wrong type raises :class:`ConfigError` naming the full dotted key, and the override or file it
came from, before any work starts. A dataclass may rename a field and keep the old spelling as a
deprecated alias: ``DEPRECATED_KEYS = {"old": "new"}`` (a :class:`ConfigDeprecationWarning`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


class ConfigDeprecationWarning(FutureWarning):
    """A configuration key was given by an old name that still works (shown to users)."""


def did_you_mean(word: str, choices: typing.Iterable[str], prefix: str = "") -> str:
    """``" (did you mean 'run.steps'?)"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(prefix + c) for c in close)}?)" if close else ""


def _renamed(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` with the deprecated keys of ``cls`` (``DEPRECATED_KEYS``) under their new names."""
    aliases: dict[str, str] = getattr(cls, "DEPRECATED_KEYS", {})
    if not any(old in data for old in aliases):
        return data
    data = dict(data)
    where = f"{prefix}." if prefix else ""
    for old, new in aliases.items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(f"{where}{old} is the old name of {where}{new}: give only {new}")
        warnings.warn(
            f"'{where}{old}' is deprecated, use '{where}{new}'", ConfigDeprecationWarning, 3
        )
        data[new] = data.pop(old)
    return data


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args if a is not ...)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it; raise naming ``key``."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not ...:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 3e-4 as a string
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # `version=3`, `run.name=2024`: YAML reads them as integers
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a schema bug, not user input


def _build(cls: type[T], data: dict[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = _renamed(cls, data, prefix)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        hint = did_you_mean(unknown[0], fields, where)
        raise ConfigError(
            f"unknown key '{where}{unknown[0]}'{hint} (known keys under "
            f"'{prefix or '<top>'}': {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        factory = fields[name].default_factory
        if isinstance(value, dict) and factory is not dataclasses.MISSING:
            default = factory()
            if dataclasses.is_dataclass(default):  # keep the factory's values not given here
                value = _merge(to_dict(default), value)
        kwargs[name] = _convert(value, hints[name], key)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:  # a required field; a check in __post_init__
        raise ConfigError(f"{prefix or '<top>'}: {err}") from None
    return obj


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``'a.b=3'`` -> ``{'a': {'b': 3}}``; the value is read as YAML (``[1,2]``, ``true``...)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({err})") from None
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def from_dict(
    cls: type[T], data: dict[str, Any], overrides: list[str] = (), validate: bool = True
) -> T:
    """Build and validate ``cls`` from nested dicts plus ``a.b=value`` overrides."""
    for text in overrides:
        data = _merge(data, parse_override(text))
    obj = _build(cls, data, "")
    check = getattr(obj, "validate", None)
    if validate and callable(check):
        check()
    return obj


def read_yaml_with_extends(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping; a top-level ``extends: other.yaml`` (relative to this file) is loaded
    first and this file's keys are merged over it."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a file path")
    return _merge(read_yaml_with_extends(path.parent / parent, (*_seen, path)), data)


def _mentions(message: str, override: str) -> bool:
    key = override.split("=", 1)[0].strip()
    return bool(key) and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


def load_config(
    cls: type[T], path: str | Path | None, overrides: list[str] = (), validate: bool = True
) -> T:
    """Load ``cls`` from a YAML file (or only defaults when ``path`` is None) plus overrides.

    An error names where the bad value came from: the file, or the override (``override
    'run.stpes=3' (over FILE): unknown key ...``); a check of the whole config (``validate()``)
    names the override whose key it mentions, else the file."""
    data = read_yaml_with_extends(path) if path is not None else {}
    over = f" (over {path})" if path is not None else ""

    def blame(err: ConfigError, override: str | None) -> ConfigError:
        if override is not None:
            return ConfigError(f"override '{override}'{over}: {err}")
        return ConfigError(f"{path}: {err}") if path is not None else err

    with warnings.catch_warnings():  # deprecations are reported once, by the last build
        warnings.simplefilter("ignore", ConfigDeprecationWarning)
        try:
            _build(cls, data, "")
        except ConfigError as err:
            raise blame(err, None) from None
        for text in overrides:
            try:
                update = parse_override(text)
            except ConfigError as err:
                raise ConfigError(f"{err}{over}") from None
            try:
                data = _merge(data, update)
                _build(cls, data, "")
            except ConfigError as err:
                raise blame(err, text) from None
    try:
        return from_dict(cls, data, validate=validate)
    except ConfigError as err:
        culprit = next((o for o in reversed(list(overrides)) if _mentions(str(err), o)), None)
        raise blame(err, culprit) from None


def to_dict(obj: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (YAML/JSON safe)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (lists kept as values), e.g. for tracking params."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
