"""spec.usage with spec.kernels: a REAL single-user server with a busy kernel, a REAL
Prometheus whose GPU series for its pod has been idle for half an hour, a real Hub that sees
the server as active (an open tab). cullIdleGPU would stop it; protectBusy keeps it."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from hubcull.engine.rules.signals import ServerKey
from hubcull.engine.signals.pods import ServerPod
from hubcull.engine.sweep.memory import SweepMemory
from hubcull.engine.sweep.runner import SweepOutcome, sweep_policy
from hubcull.engine.sweep.sources import SweepSources
from tests.support.jhub import MINIMAL_SCOPES, Hub
from tests.support.jupyter import JupyterServer, ServerLocation, start_server
from tests.support.prometheus import Usage
from tests.support.scenario import ago, policy_for

pytestmark = [pytest.mark.hub, pytest.mark.prometheus]

SILENT = "import time; time.sleep(1200)"


class OnePod:
    """The operator's pod lookup for one server at its own port on 127.0.0.1."""

    def __init__(self, location: ServerLocation) -> None:
        self._pods = {
            (location.user, ""): ServerPod("jupyter-ann", f"http://127.0.0.1:{location.port}")
        }

    async def server_pods(self) -> Mapping[ServerKey, ServerPod]:
        return self._pods


async def test_a_busy_kernel_keeps_a_server_whose_gpu_is_idle(
    jupyter_hub: Hub, usage: Usage
) -> None:
    hub = jupyter_hub
    location = await start_server(hub, "ann")
    await hub.set_times("ann", "", started=ago(7200), last_activity=ago(0))
    await usage.gpu("jupyter-ann", 0.0, history=[(30 * 60, 0.0)])
    token = await hub.token([*MINIMAL_SCOPES, "tokens"])

    async def sweep(**spec: object) -> SweepOutcome:
        usage_spec = {"prometheus": {"url": usage.prometheus.url}, "cullIdleGPU": True}
        policy = policy_for(hub, idleTimeout="20m", dryRun=True, usage=usage_spec, **spec)
        return await sweep_policy(
            policy,
            SweepSources(
                token, pods=OnePod(location), memory=SweepMemory(), namespace=usage.namespace
            ),
        )

    driver = await hub.token(["access:servers"], note="test driver")
    async with JupyterServer(location.direct_url, driver) as ann:
        kernel = await ann.start_kernel()
        await ann.run_code(kernel["id"], SILENT, wait=False)
        await ann.wait_kernel(kernel["id"], "busy")
        by_gpu = await sweep()
        kept = await sweep(kernels={"protectBusy": True})
    assert by_gpu.result is not None and kept.result is not None, (by_gpu, kept)
    assert [(c.user, c.reason) for c in by_gpu.result.culled] == [("ann", "idleGPU")]
    assert kept.result.culled == []
    [protection] = kept.result.protected
    assert protection.user == "ann" and protection.why.startswith("kernel busy for ")
    # the idleGPU candidate was probed (one probe), as an idle one would be
    assert kept.result.probes.results == {"ok": 1}
