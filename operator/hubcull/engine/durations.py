"""Int-or-string durations as the CullPolicy contract defines them.

An integer is seconds; a string is a Go-style duration with the units ``s``, ``m``, ``h`` and
``d`` (``"90s"``, ``"10m"``, ``"1h30m"``, ``"2d"``, ``"1.5h"``). The CRD schema uses the same
pattern as :data:`DURATION_PATTERN`.
"""

from __future__ import annotations

import math
import re

DURATION_PATTERN = r"^(0|([0-9]+(\.[0-9]+)?[smhd])+)$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class DurationError(ValueError):
    """A value that is not an int-or-string duration."""


def parse_duration(value: object) -> float:
    """Return the number of seconds a duration stands for.

    Raises :class:`DurationError` for negative numbers, booleans, unknown units, spaces and
    anything else the CRD schema would reject.
    """
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration (use seconds or a string like '10m')")
    if isinstance(value, int):
        if value < 0:
            raise DurationError(f"{value} is negative; durations are 0 or more seconds")
        return float(value)
    if isinstance(value, float):
        if value < 0 or not math.isfinite(value):
            raise DurationError(f"{value} is not a duration of 0 or more seconds")
        if not value.is_integer():
            raise DurationError(f"{value} is not a whole number of seconds (use '1.5s' or 2)")
        return value
    if isinstance(value, str):
        if not _DURATION_RE.match(value):
            raise DurationError(
                f"{value!r} is not a duration: use seconds or units s, m, h, d as in '90s', "
                "'10m', '1h30m', '2d'"
            )
        return float(sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART_RE.findall(value)))
    raise DurationError(f"{value!r} is not a duration (use seconds or a string like '10m')")


def format_duration(seconds: float) -> str:
    """Format seconds the way people read idle times: ``4212`` becomes ``"1h10m"``."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days}d")
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs and not days and not hours:
        parts.append(f"{secs}s")
    return "".join(parts)
