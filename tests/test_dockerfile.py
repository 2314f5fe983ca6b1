"""The Dockerfile installs what pyproject.toml declares and agrees with the Helm chart.

The image cannot be built here (no Docker daemon), so these tests read the Dockerfile: what
it copies, how it installs the package, the entrypoint, the user and the ports, and compare
them with pyproject.toml and the chart's values.yaml.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import PurePosixPath
from typing import Any

import pytest

from tests.support.helm import REPO, chart_values
from tests.support.helm_dockerfile import Instruction, dockerignore_patterns, of, parse

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    """The Dockerfile's instructions."""
    return parse()


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    """pyproject.toml."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _copy_sources(instructions: list[Instruction]) -> list[str]:
    """Every source path of every COPY/ADD (the last argument is the destination)."""
    sources: list[str] = []
    for ins in of(instructions, "COPY") + of(instructions, "ADD"):
        flags, args = ins.flags_and_args()
        assert not any(f.startswith("--from") for f in flags), "no multi-stage copies expected"
        assert len(args) >= 2, f"line {ins.line}: COPY needs a source and a destination"
        sources += args[:-1]
    return sources


def _pip_install(instructions: list[Instruction]) -> tuple[Instruction, list[str]]:
    """The RUN with `pip install` and the words of that pip command."""
    found = [ins for ins in of(instructions, "RUN") if re.search(r"\bpip install\b", ins.value)]
    assert len(found) == 1, f"expected one `pip install` RUN, got {[i.line for i in found]}"
    ins = found[0]
    command = next(part for part in re.split(r"&&|;", ins.value) if "pip install" in part)
    words = command.split()
    return ins, words[words.index("install") + 1 :]


def test_base_image_is_python_312_slim(instructions):
    """One stage, from the official python:3.12-slim image."""
    froms = of(instructions, "FROM")
    assert [f.value.split()[0] for f in froms] == ["python:3.12-slim"]


def test_base_python_is_allowed_by_requires_python(pyproject):
    """The image's Python (3.12) satisfies [project] requires-python."""
    spec = pyproject["project"]["requires-python"]
    match = re.fullmatch(r">=\s*3\.(\d+)", spec)
    assert match, f"update this test for requires-python {spec!r}"
    assert int(match.group(1)) <= 12


def test_copies_exactly_the_package_files(instructions, pyproject):
    """pyproject.toml, the readme it names and the package folder; no tests, no venv."""
    sources = {s.rstrip("/") for s in _copy_sources(instructions)}
    package_dirs = pyproject["tool"]["setuptools"]["packages"]["find"]["where"]
    expected = {"pyproject.toml", *package_dirs}
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        expected.add(readme)
    assert sources == expected
    for source in sources:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"


def test_copies_before_installing(instructions):
    """Everything is copied before `pip install .` runs."""
    install, _ = _pip_install(instructions)
    copies = of(instructions, "COPY")
    assert copies and all(c.line < install.line for c in copies)


def test_installs_the_package_without_extras(instructions, pyproject):
    """`pip install --no-cache-dir .`: the runtime dependencies only, not editable."""
    _, args = _pip_install(instructions)
    targets = [a for a in args if not a.startswith("-")]
    assert targets == ["."], f"pip install targets {targets}: install the package itself only"
    assert "--no-cache-dir" in args
    assert not any(a in {"-e", "--editable", "-r", "--requirement"} for a in args)
    extras = set(pyproject["project"].get("optional-dependencies", {}))
    assert "test" in extras  # the extras exist, and none of them is installed:
    for run in of(instructions, "RUN"):
        assert not re.search(r"\.\[", run.value), f"line {run.line} installs extras"
        for extra_dep in pyproject["project"]["optional-dependencies"]["test"]:
            name = re.split(r"[<>=!~\[ ]", extra_dep)[0]
            assert not re.search(rf"\bpip install\b.*\b{re.escape(name)}\b", run.value), (
                f"line {run.line} installs the test dependency {name}"
            )


def test_entrypoint_is_the_console_script(instructions, pyproject):
    """ENTRYPOINT ["hubcull", "run"] (exec form), hubcull being [project.scripts]'s script."""
    entrypoints = of(instructions, "ENTRYPOINT")
    assert len(entrypoints) == 1
    entry = entrypoints[0].exec_form()
    assert entry == ["hubcull", "run"], "exec form keeps hubcull PID 1, so it gets SIGTERM"
    scripts = pyproject["project"]["scripts"]
    assert entry[0] in scripts
    module, _, func = scripts[entry[0]].partition(":")
    source = REPO / pyproject["tool"]["setuptools"]["packages"]["find"]["where"][0]
    module_file = source.joinpath(*module.split(".")).with_suffix(".py")
    assert module_file.is_file(), f"{scripts[entry[0]]}: no {module_file}"
    assert re.search(rf"^def {func}\(", module_file.read_text(encoding="utf-8"), re.M)
    assert not of(instructions, "CMD"), "arguments come from the chart, not a CMD"


def test_user_is_numeric_non_root_and_matches_the_chart(instructions):
    """USER uid:gid is numeric (so runAsNonRoot can be verified), not 0, and is the chart's."""
    users = of(instructions, "USER")
    assert users, "the image must not run as root"
    last = users[-1]
    assert last.line > _pip_install(instructions)[0].line, "switch user after installing"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", last.value)
    assert match, f"USER {last.value!r} must be numeric"
    uid, gid = int(match.group(1)), match.group(2)
    assert uid != 0
    values = chart_values()
    for context in ("podSecurityContext", "containerSecurityContext"):
        assert values[context]["runAsUser"] == uid, context
        assert values[context]["runAsNonRoot"] is True, context
        if gid is not None:
            assert values[context]["runAsGroup"] == int(gid), context


def test_user_exists_with_that_uid(instructions):
    """The uid of USER is created as a system user (a passwd entry; HOME is not root's)."""
    uid = of(instructions, "USER")[-1].value.split(":")[0]
    runs = " ".join(r.value for r in of(instructions, "RUN"))
    assert re.search(rf"useradd\b[^&;]*--uid {uid}\b", runs)


def test_exposed_ports_are_the_charts(instructions):
    """EXPOSE lists the chart's health (probes) and metrics ports."""
    exposed: set[int] = set()
    for ins in of(instructions, "EXPOSE"):
        exposed |= {int(p.split("/")[0]) for p in ins.value.split()}
    values = chart_values()
    assert exposed == {values["health"]["port"], values["metrics"]["port"]}


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves a path out (last matching pattern wins, `!` re-includes)."""
    ignored = False
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        glob = body.replace("**/", "*")
        if any(fnmatch.fnmatchcase(p, glob) or fnmatch.fnmatchcase(p, body) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_copied_files_and_drops_the_rest(instructions):
    """The build context has the copied files, and not .venv, .git, .tools, tests."""
    patterns = dockerignore_patterns()
    for source in _copy_sources(instructions):
        assert not _ignored(source.rstrip("/"), patterns), f".dockerignore drops {source}"
    assert not _ignored("operator/hubcull/cli.py", patterns)
    for unwanted in (
        ".venv",
        ".git",
        ".tools",
        "tests",
        "operator/hubcull/__pycache__",
        "operator/hubcull.egg-info",
    ):
        assert _ignored(unwanted, patterns), f".dockerignore should drop {unwanted}"
