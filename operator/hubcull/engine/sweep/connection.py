"""One policy's Hub client, kept from sweep to sweep (the operator's controller and the
``hubcull sweep`` loop each keep one per policy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..hub.client import HubClient
from ..rules.policy import Policy
from ..signals.probetokens import ProbeTokens

#: How long a kept client reuses the Hub's version and the token's scopes.
REMEMBER_SECONDS = 300.0


class HubConnection:
    """One policy's Hub client, kept from sweep to sweep while the Hub settings stay the same.

    A new client is made when the URL, token, CA, timeout or concurrency changes (a new page
    size is set on the kept one). The connection also keeps the policy's probe tokens
    (``spec.kernels``): they are deleted when the Hub or its token changes and when the
    connection is closed (the policy went, or the operator stops).
    Between sweeps the kept client reuses the Hub's version and the token's scopes for
    :data:`REMEMBER_SECONDS`, so a steady sweep of a small Hub is a single listing; a sweep
    that fails forgets them, so that a fixed token or role is seen at the next sweep.
    """

    def __init__(
        self,
        on_response: Callable[[str], None] | None = None,
        probe_tokens: ProbeTokens | None = None,
    ) -> None:
        self.on_response = on_response
        self.probe_tokens = probe_tokens or ProbeTokens()
        self._client: HubClient | None = None
        self._settings: tuple[Any, ...] | None = None

    async def client(self, policy: Policy, token: str, ca_pem: str | None) -> HubClient:
        """The kept client for these settings (a new one if they changed).

        Raises :class:`ssl.SSLError` or :class:`ValueError` for a CA bundle that is not PEM.
        """
        hub = policy.hub
        settings = (hub.url, token, ca_pem, hub.request_timeout, policy.concurrency)
        if self._client is None or settings != self._settings:
            old, old_settings = self._client, self._settings
            self._client = new_client(policy, token, ca_pem, self.on_response, REMEMBER_SECONDS)
            self._settings = settings
            if old is not None and old_settings is not None:
                if old_settings[:2] != settings[:2]:
                    # a new Hub or token: the tokens go. They belong to the old Hub; on the
                    # same Hub the new token (the old one may be revoked) deletes them
                    same_hub = old_settings[0] == hub.url
                    await self.probe_tokens.release(self._client if same_hub else old)
                await old.aclose()
        self._client.page_size = policy.page_size
        return self._client

    async def aclose(self) -> None:
        """Delete the probe tokens (best effort, bounded time) and close the kept client."""
        client, self._client, self._settings = self._client, None, None
        await self.probe_tokens.release(client)
        if client is not None:
            await client.aclose()


def new_client(
    policy: Policy,
    token: str,
    ca_pem: str | None,
    on_response: Callable[[str], None] | None,
    remember_seconds: float = 0.0,
) -> HubClient:
    """A Hub client for ``policy``'s Hub settings."""
    return HubClient(
        policy.hub.url,
        token,
        timeout=policy.hub.request_timeout,
        concurrency=policy.concurrency,
        page_size=policy.page_size,
        ca_pem=ca_pem,
        on_response=on_response,
        remember_seconds=remember_seconds,
    )
