"""A small Dockerfile reader for the tests that keep the image and the Helm chart in step.

It understands what the project's Dockerfile uses: comments, ``\\`` line continuations, and
instructions in shell or exec (JSON) form. It is not a general Dockerfile parser (no
heredocs, no parser directives other than being ignored as comments, no ARG expansion).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from .helm import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case), raw arguments and line."""

    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for the shell form."""
        text = self.value.strip()
        if not text.startswith("["):
            return None
        parsed = json.loads(text)
        assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed)
        return parsed

    def words(self) -> list[str]:
        """The arguments split like a shell would (exec form: the JSON array)."""
        exec_form = self.exec_form()
        return exec_form if exec_form is not None else shlex.split(self.value)

    def flags_and_args(self) -> tuple[list[str], list[str]]:
        """Split ``--flag=value`` options (COPY --chown=...) from the positional arguments."""
        words = self.words()
        flags = [w for w in words if w.startswith("--")]
        args = [w for w in words if not w.startswith("--")]
        return flags, args


def parse(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of a Dockerfile, continuations joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by docker
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, value = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return instructions


def of(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    """The instructions with a keyword, in file order."""
    return [i for i in instructions if i.keyword == keyword]


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    """The non-comment lines of .dockerignore."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
