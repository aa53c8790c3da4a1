"""Argument checks with one message shape for every bad value: the name, the value, what would be valid and, for
names, the close matches. Every package of the project (``backbones``, ``training``, ``detection``,
``classification``) raises through these, so a user sees the same kind of message wherever a value is wrong.

Imports nothing but the standard library (``backbones`` depends on torch only).
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Mapping
from typing import Any


def did_you_mean(value: object, valid: Iterable[object], n: int = 3, cutoff: float = 0.6) -> str:
    """``" (did you mean 'a', 'b'?)"`` for the entries of ``valid`` close to ``value``, else ``""``."""
    names = [str(v) for v in valid]
    close = difflib.get_close_matches(str(value), names, n=n, cutoff=cutoff)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def check(name: str, value: object, ok: bool, valid: str) -> None:
    """Raise ``ValueError("<name>=<value> is not valid; <valid>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}={value!r} is not valid; {valid}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_probability(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a number in ``[0, 1)`` (a dropout or drop-path rate)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value < 1.0
    check(name, value, ok, "use a probability in [0, 1)")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """Raise ``ValueError`` naming ``value``, its close matches and every valid choice unless it is one of them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(
            f"{name}={value!r} is not valid{did_you_mean(value, choices, cutoff=0.5)}; choose one of "
            f"{', '.join(map(repr, choices))}"
        )


def check_keys(mapping: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Raise ``ValueError`` naming the first key of ``mapping`` not in ``valid`` as ``<where>.<key>``, its close
    matches and the valid keys."""
    valid = list(valid)
    for key in mapping:
        if key not in valid:
            raise ValueError(
                f"unknown key {where}.{key}{did_you_mean(key, valid)}; valid keys: {', '.join(map(str, valid))}"
            )


def check_int(name: str, value: object, minimum: int = 0, maximum: int | None = None, meaning: str = "") -> int:
    """Return ``value`` as an ``int`` if it is an integer (``bool`` is not) in ``[minimum, maximum]``.

    Raises ``TypeError`` for another type and ``ValueError`` out of range, both shaped like :func:`check`:
    ``"<name>=<value> is not valid; use an integer >= <minimum> (<meaning>)"``.
    """
    span = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    valid = f"use an integer {span}" + (f" ({meaning})" if meaning else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} is not valid ({type(value).__name__}); {valid}")
    check(name, value, minimum <= value and (maximum is None or value <= maximum), valid)
    return int(value)
