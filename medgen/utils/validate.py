"""Typed, range-checked settings: a frozen dataclass read from a config mapping.

Each field's type annotation says what the key holds; ``field(metadata=...)`` adds a range
(``ge``, ``gt``, ``le``, ``lt``), a choice list is a ``Literal``. Reading is strict: a boolean is
``true``/``false`` only (not ``"maybe"``, ``1`` or ``"no"``), an integer is not a float (``2.7``) or
a bool, a float may be written as an integer. Every mistake is a :class:`medgen.errors.ConfigError`
naming the full key, the value and what is allowed. Unknown keys are Hydra's to refuse (configs
are in struct mode); keys absent from the mapping take the dataclass default.

    @dataclass(frozen=True)
    class Job:
        n: int = field(default=16, metadata={"ge": 1})
        sampler: Literal["ddpm", "ddim"] | None = None

    job = read_record(Job, cfg)          # ConfigError: n=-3 is not allowed: an integer >= 1
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, get_args, get_origin

from medgen.errors import ConfigError, UserError

T = TypeVar("T")
_NO_LIMITS: Mapping[str, Any] = MappingProxyType({})

MISSING_VALUE = "???"


class MissingKeyError(UserError):
    """A required key (``???`` in the config) was not given."""

    def __init__(self, key: str, what: str) -> None:
        self.key = key
        super().__init__(f"{key} is required: set {key}=<{what}>")


def read_record(cls: type[T], values: Any, prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``values`` (a dict or an OmegaConf node).

    ``prefix`` is prepended to key names in errors (``"trainer."``). A required field (no default)
    that is absent or ``???`` is an error naming the key.
    """
    hints = typing.get_type_hints(cls)
    plain = _plain(values, [f.name for f in dataclasses.fields(cls)])  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = prefix + f.name
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in plain or plain[f.name] == MISSING_VALUE:
            if required:
                raise MissingKeyError(key, f.metadata.get("help", describe(hints[f.name])))
            continue
        kwargs[f.name] = check_value(key, plain[f.name], hints[f.name], f.metadata)
    return cls(**kwargs)


def _plain(values: Any, names: list[str]) -> dict[str, Any]:
    """The keys ``names`` of ``values`` as plain Python values (only those: other keys may hold
    interpolations that resolve only inside a Hydra run)."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(values, DictConfig):
        return {k: values[k] for k in names if k in values}
    # a DictConfig: `???` is read as the missing marker instead of raising
    items: dict[str, Any] = {}
    for key in names:
        if key not in values:
            continue
        if OmegaConf.is_missing(values, key):
            items[key] = MISSING_VALUE
        else:
            node = values[key]
            items[key] = OmegaConf.to_container(node, resolve=True) if _is_node(node) else node
    return items


def _is_node(value: Any) -> bool:
    from omegaconf import DictConfig, ListConfig

    return isinstance(value, DictConfig | ListConfig)


def check_value(
    key: str, value: Any, annotation: Any, metadata: Mapping[str, Any] = _NO_LIMITS
) -> Any:
    """``value`` checked against ``annotation`` and the range in ``metadata``; returns it converted
    (an int written where a float is wanted becomes a float, a list of ints a tuple if asked)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if len(options) == 1:
            try:
                return check_value(key, value, options[0], metadata)
            except ConfigError as err:
                if err.key != key:
                    raise  # an item of a list: its own key says more
                raise ConfigError(key, value, err.allowed + " or null") from None
        errors = []
        for option in options:
            try:
                return check_value(key, value, option, metadata)
            except ConfigError as err:
                errors.append(err.allowed)
        allowed = " or ".join(dict.fromkeys(errors))
        raise ConfigError(key, value, allowed + (" or null" if len(options) < len(args) else ""))
    if value is None:
        raise ConfigError(key, value, describe(annotation, metadata))
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise ConfigError(key, value, describe(annotation, metadata))
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, describe(annotation, metadata))
        return _in_range(key, value, annotation, metadata)
    if annotation is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ConfigError(key, value, describe(annotation, metadata))
        return float(_in_range(key, value, annotation, metadata))
    if annotation is str:
        if not isinstance(value, str) or (metadata.get("nonempty", True) and not value.strip()):
            raise ConfigError(key, value, describe(annotation, metadata))
        return value
    if annotation is Path:
        if not isinstance(value, str | Path) or not str(value).strip():
            raise ConfigError(key, value, "a path")
        return Path(str(value)).expanduser()
    if origin in (list, tuple, Sequence):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ConfigError(key, value, describe(annotation, metadata))
        inner = args[0] if args else Any
        items = [check_value(f"{key}[{i}]", v, inner, metadata) for i, v in enumerate(value)]
        if "min_len" in metadata and len(items) < metadata["min_len"]:
            raise ConfigError(key, value, describe(annotation, metadata))
        return tuple(items) if origin is tuple else items
    if annotation is Any or origin is dict or annotation is dict:
        return value
    raise TypeError(f"read_record: unsupported annotation {annotation!r} for {key}")


def _in_range(key: str, value: float, annotation: Any, metadata: Mapping[str, Any]) -> Any:
    ok = (
        ("ge" not in metadata or value >= metadata["ge"])
        and ("gt" not in metadata or value > metadata["gt"])
        and ("le" not in metadata or value <= metadata["le"])
        and ("lt" not in metadata or value < metadata["lt"])
    )
    if not ok:
        raise ConfigError(key, value, describe(annotation, metadata))
    return value


def describe(
    annotation: Any, metadata: Mapping[str, Any] = _NO_LIMITS, plural: bool = False
) -> str:
    """Words for what ``annotation`` with ``metadata`` allows ("an integer >= 1")."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin in (list, tuple, Sequence):
        inner = describe(args[0], metadata, plural=True) if args else "values"
        size = f" of at least {metadata['min_len']}" if "min_len" in metadata else ""
        return f"a list{size} of {inner}"
    words = _PLURAL if plural else _SINGULAR
    text = words.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds = [f"{op} {metadata[k]}" for k, op in _OPS if k in metadata]
    return text + (" " + " and ".join(bounds) if bounds else "")


_OPS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
_SINGULAR = {int: "an integer", float: "a number", bool: "true or false", str: "a non-empty string"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "non-empty strings"}


def check_arguments(
    fn: Callable[..., Any],
    values: Mapping[str, Any],
    *,
    prefix: str = "",
    limits: Mapping[str, Mapping[str, Any]] = _NO_LIMITS,
) -> None:
    """Check each of ``values`` against ``fn``'s annotation for that argument and its entry in
    ``limits`` (``{"lr": {"gt": 0}}``): the constructor of a config-built class calls this with
    its own arguments, so ``model.lr=abc`` fails at build time naming ``model.lr``."""
    hints = typing.get_type_hints(fn)
    for name, value in values.items():
        if name in hints:
            check_value(prefix + name, value, hints[name], limits.get(name, _NO_LIMITS))
