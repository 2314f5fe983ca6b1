"""``hubcull`` as an admin runs it, as a subprocess: a CullPolicy manifest file and the
command's exit status and output (tests/test_cli.py, tests/test_warn_cli.py, ...)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import yaml

from tests.support.scenario import TOKEN_REF

HUBCULL = str(Path(sys.executable).with_name("hubcull"))
ROOT = Path(__file__).resolve().parents[2]


def manifest(path: Path, url: str, name: str = "try", **spec: object) -> Path:
    doc = {
        "apiVersion": "hubcull.io/v1alpha1",
        "kind": "CullPolicy",
        "metadata": {"name": name, "namespace": "jhub"},
        "spec": {"hub": {"url": url, "tokenSecretRef": TOKEN_REF}, **spec},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


async def start_hubcull(*args: str, token: str | None = None) -> asyncio.subprocess.Process:
    """``hubcull ARGS`` as a subprocess with its output piped, the token in its environment."""
    env = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_API_TOKEN"}
    if token is not None:
        env["JUPYTERHUB_API_TOKEN"] = token
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubcull.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def hubcull(*args: str, token: str | None = None) -> tuple[int, str, str]:
    """Run ``hubcull ARGS`` to the end: exit status, stdout, stderr."""
    proc = await start_hubcull(*args, token=token)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def readme_section(title: str) -> str:
    """The text of the README section whose heading starts with ``title``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]
