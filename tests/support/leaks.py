"""Looking for secrets where they must not be: every log record captured at DEBUG, and the
check that a token (or a recognisable piece of it) is absent from a text."""

from __future__ import annotations

import logging

from hubcull.logs import JSONFormatter


def assert_absent(token: str, where: str, text: str) -> None:
    assert token not in text, f"the token leaked into {where}"
    # nor a recognisable piece of it (a message cut short in the middle of the token)
    assert token[:24] not in text, f"a prefix of the token leaked into {where}"


class Capture(logging.Handler):
    """Every log record of every logger, formatted with its traceback, at DEBUG: as text and
    as ``hubcull run --log-format json`` writes it (with the fields of hubcull's lines)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.json = JSONFormatter()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.lines.append(self.json.format(record))
