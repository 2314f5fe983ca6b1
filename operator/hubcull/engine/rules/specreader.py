"""Reading a CullPolicy spec field by field, collecting every problem instead of stopping at
the first, so one error message names every bad field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..durations import DurationError, parse_duration

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class SecretKeyRef:
    """A key of a Secret in the policy's own namespace."""

    name: str
    key: str


class SpecReader:
    """Reads one mapping of the spec, remembering problems instead of stopping at the first."""

    def __init__(self, data: object, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            problems.append(f"{path}: must be an object, not {type(data).__name__}")
            data = {}
        self.data: Mapping[str, Any] = data
        self.seen: set[str] = set()

    def _get(self, key: str) -> tuple[bool, Any]:
        self.seen.add(key)
        if key in self.data and self.data[key] is not None:
            return True, self.data[key]
        return False, None

    def bool(self, key: str, default: bool) -> bool:
        present, value = self._get(key)
        if not present:
            return default
        if not isinstance(value, bool):
            self.problems.append(f"{self.path}.{key}: must be true or false, not {value!r}")
            return default
        return value

    def int(self, key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        present, value = self._get(key)
        if not present:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f"{self.path}.{key}: must be a whole number, not {value!r}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            self.problems.append(f"{self.path}.{key}: must be {bounds}, not {value}")
            return default
        return value

    def duration(
        self, key: str, default: float, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        present, value = self._get(key)
        if not present:
            return default
        try:
            seconds = parse_duration(value)
        except DurationError as exc:
            self.problems.append(f"{self.path}.{key}: {exc}")
            return default
        if seconds < minimum:
            self.problems.append(f"{self.path}.{key}: must be at least {minimum:g}s, not {value!r}")
            return default
        if maximum is not None and seconds > maximum:
            self.problems.append(f"{self.path}.{key}: must be at most {maximum:g}s, not {value!r}")
            return default
        return seconds

    def present(self, key: str) -> bool:
        """True when ``key`` is set (not absent, not null)."""
        return self.data.get(key) is not None

    def str(self, key: str, required: bool = False) -> str | None:
        present, value = self._get(key)
        if not present:
            if required:
                self.problems.append(f"{self.path}.{key}: is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.problems.append(f"{self.path}.{key}: must be a non-empty string, not {value!r}")
            return None
        return value

    def dns_label(self, key: str) -> str:
        """A name such as a namespace's (an RFC 1123 label), or ``""`` when absent or empty."""
        present, value = self._get(key)
        if not present or value == "":
            return ""
        if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.fullmatch(value):
            self.problems.append(f"{self.path}.{key}: must be a namespace name, not {value!r}")
            return ""
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        present, value = self._get(key)
        if not present:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problems.append(f"{self.path}.{key}: must be a list of strings, not {value!r}")
            return ()
        return tuple(value)

    def number(
        self, key: str, default: float, minimum: float, maximum: float | None = None
    ) -> float:
        present, value = self._get(key)
        if not present:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problems.append(f"{self.path}.{key}: must be a number, not {value!r}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum:g}" if maximum is None else f"{minimum:g} to {maximum:g}"
            self.problems.append(f"{self.path}.{key}: must be {bounds}, not {value}")
            return default
        return float(value)

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        """One of ``choices``; the first is the default."""
        present, value = self._get(key)
        if not present:
            return choices[0]
        if value not in choices:
            allowed = " or ".join(choices)
            self.problems.append(f"{self.path}.{key}: must be {allowed}, not {value!r}")
            return choices[0]
        return str(value)

    def child(self, key: str) -> SpecReader:
        _, value = self._get(key)
        return SpecReader(value, f"{self.path}.{key}", self.problems)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            names = ", ".join(unknown)
            self.problems.append(f"{self.path}: unknown field(s) {names}")


def secret_ref(reader: SpecReader, key: str, required: bool) -> SecretKeyRef | None:
    """The ``{name, key}`` Secret reference at ``key`` (``None`` when absent or bad)."""
    present = reader.data.get(key) is not None
    if not present:
        if required:
            reader.problems.append(f"{reader.path}.{key}: is required (a Secret name and key)")
        reader.seen.add(key)
        return None
    ref = reader.child(key)
    name, secret_key = ref.str("name", required=True), ref.str("key", required=True)
    ref.finish()
    if name is None or secret_key is None:
        return None
    return SecretKeyRef(name=name, key=secret_key)


def http_url(reader: SpecReader, key: str, example: str, required: bool = True) -> str:
    """The http(s) URL at ``key`` without a trailing slash ("" when absent or bad); a bad one
    is reported with ``example`` of what it should look like. An optional URL may be ""."""
    if not required and reader.data.get(key) == "":
        reader.seen.add(key)
        return ""
    url = reader.str(key, required=required)
    if url is None:
        return ""
    try:
        parts = urlsplit(url)
        bad = parts.scheme not in ("http", "https") or not parts.hostname
        bad = bad or parts.port == 0  # .port raises ValueError for a port out of range
        bad = bad or bool(parts.query or parts.fragment or url.endswith(("?", "#")))
    except ValueError:  # e.g. "http://[::1/hub/api": an unclosed IPv6 literal
        bad = True
    # whitespace or control characters: httpx refuses such a URL with an exception of its own
    if bad or any(ch.isspace() or not ch.isprintable() for ch in url):
        reader.problems.append(
            f"{reader.path}.{key}: {url!r} must be an http:// or https:// URL, like {example}"
        )
    return url.rstrip("/")
