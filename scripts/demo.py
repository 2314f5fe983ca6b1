"""The local demo: start a real JupyterHub, give it some idle servers, run `hubcull sweep`.

Run through `scripts/demo` (which installs what it needs). Everything stays on 127.0.0.1 and
the Hub is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.jhub import MINIMAL_SCOPES, start_hub  # noqa: E402
from tests.support.scenario import populate  # noqa: E402

MINUTE = 60


def demo_state() -> dict[tuple[str, str], float]:
    """(user, server) -> seconds idle: 8 idle for hours, 4 for 15 minutes, 12 active."""
    state: dict[tuple[str, str], float] = {}
    for i in range(8):
        state[(f"student{i:02d}", "")] = (2 + i) * 60 * MINUTE
    for i in range(4):
        state[(f"research{i}", "gpu")] = 15 * MINUTE
    for i in range(12):
        state[(f"active{i:02d}", "")] = (i % 5 + 1) * MINUTE
    return state


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hubcull-demo-") as tmp:
        print("Starting a local JupyterHub with configurable-http-proxy on 127.0.0.1 ...")
        async with start_hub(Path(tmp) / "hub") as hub:
            state = demo_state()
            await populate(hub, state)
            token = await hub.token(MINIMAL_SCOPES)
            print(f"Hub API at {hub.api_url}: {len(state)} running servers, 12 idle over 10m.\n")
            policy = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
            policy["spec"]["hub"]["url"] = hub.api_url
            policy_path = Path(tmp) / "demo.yaml"
            policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
            command = [
                sys.executable,
                "-m",
                "hubcull.cli",
                "sweep",
                "-f",
                str(policy_path),
                "--once",
            ]
            print("$ hubcull sweep -f examples/demo.yaml --once   (url set to the local Hub)\n")
            env = {**os.environ, "JUPYTERHUB_API_TOKEN": token}
            proc = await asyncio.to_thread(subprocess.run, command, env=env, check=False)
            left = await hub.running_servers()
            print(f"\nStill running after the sweep: {len(left)} servers (all active < 10m).")
            return proc.returncode


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
