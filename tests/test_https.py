"""An https Hub: the CA bundle of `hub.caSecretRef` (or `--ca-file`) is what hubcull trusts."""

from __future__ import annotations

import pytest
import trustme

from hubcull.engine.sweep.runner import sweep_policy
from hubcull.engine.sweep.sources import SweepSources
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.scenario import culled_labels, policy_for, populate
from tests.support.tls import tls_terminator

pytestmark = pytest.mark.hub


async def test_https_hub_with_a_private_ca(hub: Hub) -> None:
    await populate(hub, {("ann", ""): 7200})
    token = await hub.token(MINIMAL_SCOPES)
    ca = trustme.CA()
    async with tls_terminator(hub.api_url, ca.issue_cert("127.0.0.1")) as port:
        url = f"https://127.0.0.1:{port}/hub/api"
        untrusted = await sweep_policy(
            policy_for(url, hub={"requestTimeout": "5s"}), SweepSources(token)
        )
        assert untrusted.reason == "HubUnreachable" and "CERTIFICATE" in (untrusted.message or "")
        assert await hub.running_servers() == {("ann", "")}
        ca_pem = ca.cert_pem.bytes().decode()
        trusted = await sweep_policy(policy_for(url), SweepSources(token, ca_pem=ca_pem))
        assert culled_labels(trusted) == {"ann"}
        bad = await sweep_policy(policy_for(url), SweepSources(token, ca_pem="not a pem"))
        assert bad.reason == "InvalidSpec" and "CA bundle" in (bad.message or "")
