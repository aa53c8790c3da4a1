"""The one typed schema of every config group: a frozen dataclass per group whose fields carry the type (the
annotation) and the range (:func:`key`), read by one parser (:func:`parse`) that names the bad key in full.

Every group of both tasks is a schema of this kind: the solver (:class:`training.optim.Solver`), the trainer
(:class:`training.trainer.TrainerConfig`), the backbone (:class:`training.config.BackboneConfig`), and each task's
top-level keys, dataset, detector and recipe (``detection/module.py``, ``classification/module.py``). A value of the
wrong type or range, a null where the key has no default, an unknown choice or an unknown key is refused with one
line in the shape of :mod:`backbones.checks`::

    solver.lr='abc' is not valid; a number > 0
    dataset.batch_size=0 is not valid; an integer >= 1 (images per device)
    unknown key trainer.max_step (did you mean 'max_steps'?); valid keys: ...

Types understood: ``bool``, ``int`` (``True`` is no integer), ``float`` (an integer is accepted and converted),
``str``, ``Any``, ``dict``, ``list[T]``, ``tuple[T, ...]``, ``tuple[T1, T2]``, ``Literal[...]``, a nested schema
(a dataclass), and unions of them (``int | None``: null allowed). Cross-field rules go in the schema's
``__post_init__``. Standard library only (``backbones.checks`` for the message shape).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

from backbones.checks import check_choice, check_keys

__all__ = ["ConfigError", "key", "parse", "prefixed", "schema_keys"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value refused by its schema; the message names the key in full and what would be valid."""


def key(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Iterable[Any] | None = None,
    check: Callable[[Any], bool] | None = None,
    valid: str | None = None,
    doc: str = "",
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A schema field: ``default`` (or ``factory``), numeric bounds (``ge``/``gt``/``le``/``lt``, also applied to the
    items of a list), ``choices`` (for a string, or each item of a list), a custom ``check(value) -> bool`` with its
    ``valid`` text, and ``doc``: what the key means, appended to the message."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "check": check, "valid": valid, "doc": doc}
    meta["choices"] = tuple(choices) if choices is not None else None
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def schema_keys(cls: type) -> tuple[str, ...]:
    """The keys (field names) of a schema, in order."""
    return tuple(f.name for f in dataclasses.fields(cls))


# ---- types ----------------------------------------------------------------------------------------------------------
def _arms(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (``int | None`` -> ``(int, NoneType)``); a single type as itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_NO = object()  # "does not conform"


def _conform(value: Any, tp: Any, name: str) -> Any:
    """``value`` as type ``tp`` (an int for a float becomes a float; a list for a tuple a tuple), or ``_NO``."""
    if tp is Any:
        return value
    if tp is type(None):
        return None if value is None else _NO
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        return float(value) if _number(value) else _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, name) if isinstance(value, Mapping) else _NO
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else _NO
    if tp is dict or origin in (dict, Mapping):
        return dict(value) if isinstance(value, Mapping) else _NO
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return _NO
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            return _NO
        item_types = [args[0]] * len(value) if origin is list or args[-1:] == (Ellipsis,) else list(args)
        items = [_conform_union(v, t, f"{name}[{i}]") for i, (v, t) in enumerate(zip(value, item_types))]
        if any(v is _NO for v in items):
            return _NO
        return tuple(items) if origin is tuple else items
    raise TypeError(f"schema type {tp!r} of {name} is not supported")


def _conform_union(value: Any, tp: Any, name: str) -> Any:
    for arm in _arms(tp):
        out = _conform(value, arm, name)
        if out is not _NO:
            return out
    return _NO


def _describe(tp: Any) -> str:
    """What a type accepts, in words: ``an integer``, ``null or a number``, ``a list of numbers``."""
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Any: "any value"}
    if tp in words:
        return words[tp]
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(schema_keys(tp))}"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in sorted(args, key=lambda a: a is not type(None)))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if tp is dict or origin in (dict, Mapping):
        return "a mapping"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin in (list, tuple):
        item = _describe(args[0]) if args else "values"
        return "a list of " + re.sub(r"^an? ", "", item).replace("integer", "integers").replace("number", "numbers")
    return str(tp)


def _bounds(meta: Mapping[str, Any]) -> str:
    ops = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
    return " and ".join(f"{op} {_num(meta[k])}" for k, op in ops if meta[k] is not None)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _in_bounds(v: Any, meta: Mapping[str, Any]) -> bool:
    if not _number(v):
        return True
    return not (
        (meta["gt"] is not None and not v > meta["gt"])
        or (meta["ge"] is not None and not v >= meta["ge"])
        or (meta["lt"] is not None and not v < meta["lt"])
        or (meta["le"] is not None and not v <= meta["le"])
    )


def _valid_text(tp: Any, meta: Mapping[str, Any]) -> str:
    """``<type> <bounds>`` (or the field's ``valid`` text), ``, or null`` when null is allowed, then ``(doc)``."""
    arms = [a for a in _arms(tp) if a is not type(None)]
    nullable = len(arms) < len(_arms(tp))
    text = meta["valid"] or " ".join(filter(None, [" or ".join(_describe(a) for a in arms), _bounds(meta)]))
    return text + (", or null" if nullable else "") + (f" ({meta['doc']})" if meta["doc"] else "")


def check_field(name: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """One key's value, checked against its annotation ``tp`` and :func:`key` metadata; returns it conformed.

    Raises:
        ConfigError: ``<name>=<value> is not valid; <what is valid>``.
    """
    valid = _valid_text(tp, meta)
    if value is None and type(None) not in _arms(tp) and tp is not Any:
        raise ConfigError(f"{name}=None is not valid; it has no null value, give {valid}")
    out = _conform_union(value, tp, name)
    if out is _NO:
        raise ConfigError(f"{name}={value!r} is not valid; {valid}")
    if out is None:
        return None
    items = out if isinstance(out, list | tuple) else [out]
    if meta["choices"] is not None:
        for item in items:
            if item not in meta["choices"]:
                shown = [c for i, c in enumerate(meta["choices"]) if str(c) not in map(str, meta["choices"][:i])]
                try:
                    check_choice(name + ("[]" if isinstance(out, list | tuple) else ""), item, shown)
                except ValueError as e:
                    raise ConfigError(str(e)) from None
    if not all(_in_bounds(v, meta) for v in items) or (meta["check"] is not None and not meta["check"](out)):
        raise ConfigError(f"{name}={value!r} is not valid; {valid}")
    return out


def parse(cls: type[T], cfg: Mapping[str, Any], where: str = "", unknown_where: str | None = None) -> T:
    """A ``cls`` instance (a schema dataclass) from the mapping ``cfg``: unknown keys refused (with close matches),
    each given key checked (:func:`check_field`), absent keys at their defaults, then ``cls.__post_init__``.

    Args:
        where: the group's name, prefixed to every key in messages (``solver`` -> ``solver.lr``; "" for top-level
            keys).
        unknown_where: the name of the group in the unknown-key message (default ``where``, or ``config``).

    Raises:
        ConfigError: the first bad key, named in full.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where or 'config'}={cfg!r} is not valid; {_describe(cls)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    try:
        check_keys(cfg, list(fields), unknown_where or where or "config")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in cfg.items():
        f = fields[name]
        meta = f.metadata or key().metadata
        values[name] = check_field(f"{where}.{name}" if where else name, value, hints[name], meta)
    return cls(**values)


@contextlib.contextmanager
def prefixed(prefix: str, keys: Iterable[str] | None = None) -> Iterator[None]:
    """Name the keys of a group in full in the messages of checks that run elsewhere: a ``ValueError`` or
    ``TypeError`` raised inside whose message starts with ``<key>=`` (the :mod:`backbones.checks` shape; ``keys``:
    only these) is raised again as ``<prefix>.<key>=...``. Lets a schema run the data layer's own checks of its
    arguments (one rule, one place) before any work, under the config's key names."""
    try:
        yield
    except (ValueError, TypeError) as e:
        m = re.match(r"(\w+)=", str(e))
        if type(e) not in (ValueError, TypeError, ConfigError) or m is None or (keys is not None and m[1] not in keys):
            raise
        raise ConfigError(f"{prefix}.{e}") from e
