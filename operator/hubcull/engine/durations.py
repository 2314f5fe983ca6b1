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
    """Format seconds the way people read idle times, rounded rather than cut.

    Under an hour: to the nearest second (``59.6`` is ``"1m"``, ``754.4`` is ``"12m34s"``).
    From an hour on: to the nearest minute (``4212`` is ``"1h10m"``, ``32399.9`` is ``"9h"``,
    ``93600`` is ``"1d2h"``). Halves round up; negative values are ``"0s"``.
    """
    if not math.isfinite(seconds):
        return "unknown"
    value = max(0.0, float(seconds))
    total = math.floor(value + 0.5)
    if total < 3600:
        minutes, secs = divmod(total, 60)
        if not minutes:
            return f"{secs}s"
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    total_minutes = math.floor(value / 60 + 0.5)
    days, rest = divmod(total_minutes, 1440)
    hours, minutes = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return "".join(parts)
