"""The Kubernetes side of one policy's controller, recorded: Secret reads and status patches
(tests/test_controller.py, tests/test_warn_operator.py)."""

from __future__ import annotations

from typing import Any


class SecretsAndStatus:
    """The two Kubernetes calls a sweep makes: Secret values by (name, key), status patches."""

    def __init__(self, token: str) -> None:
        self.values = {("hub", "hub.services.hubcull.apiToken"): token}
        self.reads = 0
        self.statuses: list[dict[str, Any]] = []

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        self.reads += 1
        return self.values.get((name, key))

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self.statuses.append(status)
        return True

    def rotate(self, token: str) -> None:
        self.values[("hub", "hub.services.hubcull.apiToken")] = token
