"""The Dockerfile installs what pyproject.toml declares, from pinned inputs, and agrees with
the Helm chart.

The image cannot be built here (no Docker daemon), so these tests read the Dockerfile: the
base image digest, what it copies, how it installs the lock and the package, the byte
compilation, the entrypoint, the user and the ports, and compare them with pyproject.toml,
the lock (requirements/image.txt) and the chart's values.yaml. ``scripts/lock`` checks,
with the network, that the lock's hashes cover the linux/amd64 and linux/arm64 wheels.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
from pathlib import PurePosixPath
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.helm import REPO, chart_values
from tests.support.helm_dockerfile import Instruction, dockerignore_patterns, of, parse

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

LOCK = "requirements/image.txt"
#: The environments the image runs in, for evaluating dependency markers.
IMAGE_ENVIRONMENTS = [
    {
        "python_version": "3.12",
        "python_full_version": "3.12.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_system": "Linux",
        "platform_machine": machine,
        "extra": "",
    }
    for machine in ("x86_64", "aarch64")
]


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


def _pip_installs(instructions: list[Instruction]) -> list[tuple[Instruction, list[str]]]:
    """Each RUN's `pip install` command, as (instruction, the words after `install`)."""
    found = []
    for ins in of(instructions, "RUN"):
        for command in re.split(r"&&|;", ins.value):
            words = command.split()
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                found.append((ins, words[words.index("install") + 1 :]))
    return found


def _lock_install(instructions: list[Instruction]) -> tuple[Instruction, list[str]]:
    """The `pip install -r requirements/image.txt`."""
    found = [(i, w) for i, w in _pip_installs(instructions) if LOCK in w]
    assert len(found) == 1, f"expected one `pip install -r {LOCK}`, got {found}"
    return found[0]


def _package_install(instructions: list[Instruction]) -> tuple[Instruction, list[str]]:
    """The `pip install ... .` of the package itself."""
    found = [(i, w) for i, w in _pip_installs(instructions) if "." in w]
    assert len(found) == 1, f"expected one `pip install .`, got {found}"
    return found[0]


def _lock_entries() -> dict[str, tuple[str, list[str], Marker | None]]:
    """The lock's pins: canonical name -> (version, sha256 hashes, marker or None)."""
    text = (REPO / LOCK).read_text(encoding="utf-8")
    entries: dict[str, tuple[str, list[str], Marker | None]] = {}
    for block in re.split(r"\n(?=\S)", text):
        block = block.strip()
        if not block or block.startswith("#"):
            continue
        requirement = block.split("\\", 1)[0].strip()
        spec, _, marker = requirement.partition(";")
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", spec.strip())
        assert match, f"{LOCK}: {requirement!r} is not pinned with =="
        name = canonicalize_name(match.group(1))
        assert name not in entries, f"{LOCK} pins {name} twice"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", block)
        entries[name] = (match.group(2), hashes, Marker(marker) if marker.strip() else None)
    return entries


def test_base_image_is_python_312_slim_pinned_by_digest(instructions):
    """One stage, from the official python:3.12-slim image, pinned by its sha256 digest."""
    froms = of(instructions, "FROM")
    assert len(froms) == 1, "one stage"
    image = froms[0].value.split()[0]
    match = re.fullmatch(r"python:3\.12-slim@sha256:([0-9a-f]{64})", image)
    assert match, f"FROM {image}: pin python:3.12-slim by digest (tag@sha256:...)"


def test_dockerfile_says_how_to_refresh_the_digest():
    """The comment gives the command that prints the multi-platform index digest."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "docker buildx imagetools inspect python:3.12-slim" in text


def test_base_python_is_allowed_by_requires_python(pyproject):
    """The image's Python (3.12) satisfies [project] requires-python."""
    spec = pyproject["project"]["requires-python"]
    match = re.fullmatch(r">=\s*3\.(\d+)", spec)
    assert match, f"update this test for requires-python {spec!r}"
    assert int(match.group(1)) <= 12


def test_copies_exactly_the_package_files(instructions, pyproject):
    """pyproject.toml, the readme and license it names, the lock and the package folder."""
    sources = {s.rstrip("/") for s in _copy_sources(instructions)}
    package_dirs = pyproject["tool"]["setuptools"]["packages"]["find"]["where"]
    expected = {"pyproject.toml", LOCK, *package_dirs, *pyproject["project"]["license-files"]}
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        expected.add(readme)
    assert sources == expected
    for source in sources:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"


def test_lock_is_installed_by_hash_before_the_code_is_copied(instructions):
    """`pip install --require-hashes --only-binary=:all: -r requirements/image.txt`, right
    after copying the lock alone (a code change does not reinstall the dependencies)."""
    ins, args = _lock_install(instructions)
    assert "--require-hashes" in args
    assert "--only-binary=:all:" in args, "wheels only: no sdist build with unpinned tools"
    assert args[args.index("-r") + 1] == LOCK
    copies = of(instructions, "COPY")
    lock_copy = [c for c in copies if c.flags_and_args()[1][0] == LOCK]
    assert lock_copy and lock_copy[0].line < ins.line
    others = [c for c in copies if c not in lock_copy]
    assert others and all(c.line > ins.line for c in others)


def test_package_is_installed_alone_after_the_lock(instructions):
    """`pip install --no-deps --no-build-isolation .` after everything is copied: nothing is
    resolved or downloaded then (the build backend comes from the lock too)."""
    ins, args = _package_install(instructions)
    targets = [a for a in args if not a.startswith("-")]
    assert targets == ["."], f"pip install targets {targets}: install the package itself only"
    assert {"--no-deps", "--no-build-isolation", "--no-cache-dir"} <= set(args)
    assert not any(a in {"-e", "--editable", "-r", "--requirement"} for a in args)
    assert _lock_install(instructions)[0].line < ins.line
    assert all(c.line < ins.line for c in of(instructions, "COPY"))


def test_installs_no_extras(instructions, pyproject):
    """No test or bench extra, and none of their packages, is installed."""
    extras = set(pyproject["project"].get("optional-dependencies", {}))
    assert "test" in extras  # the extras exist, and none of them is installed:
    lock = _lock_entries()
    runtime = _runtime_closure(pyproject)
    for run in of(instructions, "RUN"):
        assert not re.search(r"\.\[", run.value), f"line {run.line} installs extras"
    for extra_dep in pyproject["project"]["optional-dependencies"]["test"]:
        name = canonicalize_name(Requirement(extra_dep).name)
        if name not in runtime:
            assert name not in lock, f"{LOCK} pins the test dependency {name}"
        for run in of(instructions, "RUN"):
            assert not re.search(rf"\bpip install\b.*\b{re.escape(name)}\b", run.value), (
                f"line {run.line} installs the test dependency {name}"
            )


def test_standard_library_is_byte_compiled_at_build_time(instructions):
    """`python -m compileall` of the stdlib (sysconfig's path) after the installs, and no
    .pyc writes at run time: the root filesystem is read-only there."""
    compile_runs = [r for r in of(instructions, "RUN") if "compileall" in r.value]
    assert len(compile_runs) == 1
    run = compile_runs[0]
    assert re.search(r"python -m compileall\b", run.value)
    assert 'sysconfig.get_path("stdlib")' in run.value or "sysconfig.get_path('stdlib')" in (
        run.value
    ), "compile the standard library's folder, wherever the image has it"
    assert run.line >= _package_install(instructions)[0].line
    env = [e for e in of(instructions, "ENV") if "PYTHONDONTWRITEBYTECODE=1" in e.value]
    assert env and env[0].line > run.line
    assert of(instructions, "USER")[-1].line > run.line


def test_build_backend_is_removed_after_the_build(instructions, pyproject):
    """setuptools (from the lock, for the build) is uninstalled in the same RUN."""
    ins, _ = _package_install(instructions)
    backend = Requirement(pyproject["build-system"]["requires"][0]).name
    assert re.search(rf"pip uninstall --yes {backend}\b", ins.value)


# ------------------------------------------------------------------------------------------
# the lock


def _runtime_closure(pyproject: dict[str, Any]) -> set[str]:
    """[project.dependencies] and, through the installed distributions' metadata, everything
    they need in the image (markers evaluated for Linux amd64/arm64, Python 3.12)."""
    todo = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        requires = importlib.metadata.requires(req.name) or []
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(
                sub.marker.evaluate({**env, "extra": extra})
                for env in IMAGE_ENVIRONMENTS
                for extra in ("", *req.extras)
            ):
                todo.append(Requirement(str(sub).split(";")[0]))
    return seen


def test_lock_pins_every_runtime_dependency_with_hashes(pyproject):
    """Each [project.dependencies] entry is in the lock, pinned (==) to a version its
    specifier allows, with sha256 hashes; so is the build backend."""
    lock = _lock_entries()
    wanted = [*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"]]
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in lock, f"{LOCK} lacks {req.name}: run scripts/lock"
        version, hashes, _ = lock[name]
        assert req.specifier.contains(Version(version), prereleases=True), (
            f"{LOCK} pins {name}=={version}, outside {req}: run scripts/lock"
        )
        assert hashes, f"{LOCK}: {name} has no hash"


def test_every_lock_entry_has_hashes_for_several_files():
    """pip's --require-hashes needs a hash for every pin; compiled packages have one per
    wheel (amd64, arm64, ...), so one hash alone means a platform is missing."""
    lock = _lock_entries()
    assert len(lock) >= 10
    for name, (_, hashes, _) in lock.items():
        assert hashes, f"{LOCK}: {name} has no hash"
        assert len(set(hashes)) == len(hashes), f"{LOCK}: {name} repeats a hash"
    for compiled in ("pyyaml", "aiohttp", "multidict", "yarl"):
        if compiled in lock:
            assert len(lock[compiled][1]) >= 4, f"{compiled}: too few hashes for every platform"


def test_lock_covers_the_whole_dependency_closure(pyproject):
    """Everything the runtime dependencies need (per the metadata installed here) is pinned:
    pip --require-hashes would refuse the build otherwise."""
    lock = _lock_entries()
    closure = _runtime_closure(pyproject)
    missing = sorted(closure - set(lock))
    assert not missing, f"{LOCK} lacks {missing}: run scripts/lock"
    for name in closure:
        marker = lock[name][2]
        for env in IMAGE_ENVIRONMENTS:
            assert marker is None or marker.evaluate(env), (
                f"{LOCK}: {name} ({marker}) is skipped on linux/{env['platform_machine']}"
            )


def test_lock_records_how_to_regenerate_it():
    """The header names scripts/lock, and scripts/lock compiles with hashes for all platforms."""
    header = (REPO / LOCK).read_text(encoding="utf-8").splitlines()[:3]
    assert "#    scripts/lock" in header
    script = (REPO / "scripts" / "lock").read_text(encoding="utf-8")
    for flag in (
        "uv pip compile pyproject.toml requirements/build.in",
        "--generate-hashes",
        "--universal",
        "--python-version 3.12",
        "--output-file requirements/image.txt",
    ):
        assert flag in script
    build_in = [
        line
        for line in (REPO / "requirements" / "build.in").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    with (REPO / "pyproject.toml").open("rb") as f:
        assert build_in == tomllib.load(f)["build-system"]["requires"]


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
    assert last.line > _package_install(instructions)[0].line, "switch user after installing"
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
