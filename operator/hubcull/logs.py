"""How ``hubcull`` logs: INFO for hubcull's own lines by default (``hubcull run``), the HTTP
client and kopf's internals only with ``-vv``, as text or one JSON object per line."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

#: Loggers of libraries whose INFO and DEBUG lines (one per HTTP request, kopf's handler
#: bookkeeping) only ``-vv`` shows.
CHATTY = ("httpx", "httpcore", "kopf", "aiohttp", "kubernetes", "asyncio", "urllib3")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "hubcull"
#: kopf's peering logger: its INFO lines say when this replica pauses or resumes.
PEERING = "kopf._core.engines.peering"


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the line's
    ``fields`` (hubcull's sweep and action lines carry them) and ``error`` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update({k: v for k, v in fields.items() if k not in doc})
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(verbosity: int, fmt: str = "text", default: int = logging.WARNING) -> None:
    """Set up the root logger: hubcull at ``default``, one level more per ``-v``
    (``verbosity``); the libraries in :data:`CHATTY` at WARNING unless ``-vv``; each line in
    ``fmt`` (``text`` or ``json``)."""
    level = max(default - 10 * verbosity, logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)  # a second configure (tests call main() twice) replaces it
    root.addHandler(handler)
    root.setLevel(level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(level if verbosity >= 2 else logging.WARNING)
    # which replica is active (kopf's peering: pausing, resuming) matters to an admin
    logging.getLogger(PEERING).setLevel(min(level, logging.INFO))
