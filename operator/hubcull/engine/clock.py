"""The sweep's clock: the local clock in UTC, replaceable in tests (a sweep judges with the
Hub's clock, read from its ``Date`` header, and falls back to this one)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The local clock, in UTC."""
    return datetime.now(timezone.utc)
