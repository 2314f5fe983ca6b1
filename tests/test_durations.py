"""``format_duration``: idle times rounded the way a person reads them, at every edge."""

from __future__ import annotations

import pytest

from hubcull.engine.durations import format_duration, parse_duration

HOUR = 3600


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),  # a Hub clock a little behind the server's activity
        (0.49, "0s"),
        (0.5, "1s"),
        (45, "45s"),
        (59.49, "59s"),
        (59.5, "1m"),  # not "60s"
        (60, "1m"),
        (61, "1m1s"),
        (754.4, "12m34s"),
        (754.5, "12m35s"),
        (3599.49, "59m59s"),
        (3599.5, "1h"),  # not "59m60s" or "60m"
        (HOUR, "1h"),
        (HOUR + 29.9, "1h"),  # nearest minute from an hour on
        (HOUR + 30, "1h1m"),
        (4212, "1h10m"),
        (4320, "1h12m"),
        (9 * HOUR - 1, "9h"),  # the bug: a server idle 9 h read "8h59m"
        (9 * HOUR - 0.1, "9h"),
        (9 * HOUR - 31, "8h59m"),
        (24 * HOUR - 30, "1d"),  # 23h59m30s rounds up into the next day
        (24 * HOUR - 30.1, "23h59m"),
        (2 * 86400 + HOUR, "2d1h"),
        (86400 + 61, "1d1m"),
        (float("nan"), "unknown"),
    ],
)
def test_format_duration_rounds_to_what_a_person_reads(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["45s", "1m1s", "12m34s", "1h", "1h10m", "9h", "1d2h", "2d1h"])
def test_formatted_durations_parse_back_to_the_same_value(text: str) -> None:
    assert format_duration(parse_duration(text)) == text
