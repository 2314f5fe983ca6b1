"""Kubernetes resource quantities (``500m``, ``1Gi``, ``2``, ``1e3``), parsed exactly.

The grammar is Kubernetes' own (k8s.io/apimachinery ``resource.Quantity``)::

    <quantity>        ::= <signedNumber><suffix>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>

Values are exact :class:`~fractions.Fraction` s, so ``0.1`` plus ``0.2`` CPUs is ``300m`` and a
sum of requests never drifts. ``K`` (capital) and ``1e`` are not quantities, as in Kubernetes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction

_QUANTITY_RE = re.compile(
    r"^(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|[eE](?P<exponent>[+-]?[0-9]+)|(?P<decimal>[mkMGTPE]))?$"
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
#: Exponents beyond this are refused (Kubernetes caps quantities far below 10**1000).
_MAX_EXPONENT = 1000


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


def parse_quantity(value: object) -> Fraction:
    """The exact value of a Kubernetes quantity (an int or float is taken as is).

    Raises :class:`QuantityError` for anything Kubernetes would reject.
    """
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise QuantityError(f"{value!r} is not a quantity")
        return Fraction(str(value))
    if not isinstance(value, str):
        raise QuantityError(f"{value!r} is not a quantity")
    match = _QUANTITY_RE.match(value)
    if match is None:
        raise QuantityError(f"{value!r} is not a quantity (like 500m, 2, 1Gi or 1e3)")
    number = Fraction(match["number"])
    if match["sign"] == "-":
        number = -number
    if match["binary"]:
        return number * 2 ** _BINARY[match["binary"]]
    if match["exponent"] is not None:
        exponent = int(match["exponent"])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(f"{value!r} is out of range")
        return number * Fraction(10) ** exponent
    if match["decimal"]:
        return number * Fraction(10) ** _DECIMAL[match["decimal"]]
    return number


def format_quantity(value: Fraction, resource: str = "") -> str:
    """A short readable form: ``2``, ``500m``, ``4Gi`` (memory in binary units)."""
    if resource in ("memory", "ephemeral-storage") and value > 0:
        for suffix, power in sorted(_BINARY.items(), key=lambda item: -item[1]):
            unit = 2**power
            if value % unit == 0:
                return f"{value // unit}{suffix}"
    if value.denominator == 1:
        return str(value.numerator)
    milli = value * 1000
    if milli.denominator == 1:
        return f"{milli.numerator}m"
    return f"{float(value):g}"


def parse_resources(values: object) -> tuple[dict[str, Fraction], list[str]]:
    """A ``requests`` or ``limits`` mapping as exact values, and the problems found (a bad
    quantity is left out and named, never a crash)."""
    if not isinstance(values, Mapping):
        return {}, ([] if values is None else [f"resources must be a mapping, not {values!r}"])
    parsed: dict[str, Fraction] = {}
    problems: list[str] = []
    for name, raw in values.items():
        try:
            parsed[str(name)] = parse_quantity(raw)
        except QuantityError as exc:
            problems.append(f"{name}: {exc}")
    return parsed, problems
