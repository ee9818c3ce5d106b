"""The README's examples, as the tests run them: every block marked ``<!-- example: KIND -->``
is read from README.md, and each command in it is run exactly as written, in a shell."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

_BLOCK = re.compile(r"<!-- example: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.S)


@dataclass(frozen=True)
class Example:
    """One marked block: its kind, language and text."""

    kind: str
    language: str
    text: str
    line: int

    def commands(self) -> list[str]:
        """The shell lines that run the CLI (comments stay: the shell ignores them)."""
        return [
            line
            for line in self.text.splitlines()
            if line.startswith("crm-ledger ") or "| crm-ledger " in line
        ]


def examples(*kinds: str) -> list[Example]:
    """The marked blocks of the given kinds, in the README's order."""
    text = README.read_text(encoding="utf-8")
    return [
        Example(m.group(1), m.group(2), m.group(3), text[: m.start()].count("\n") + 1)
        for m in _BLOCK.finditer(text)
        if m.group(1) in kinds
    ]


def unmarked_cli_blocks() -> list[int]:
    """Lines of shell blocks that run the CLI without a marker (each must have one)."""
    text = README.read_text(encoding="utf-8")
    marked = {m.start(2) - 3 for m in _BLOCK.finditer(text)}
    found = []
    for m in re.finditer(r"```sh\n(.*?)```", text, re.S):
        has_cli = any(line.startswith("crm-ledger ") for line in m.group(1).splitlines())
        if has_cli and m.start() not in marked:
            found.append(text[: m.start()].count("\n") + 1)
    return found


def shell(
    command: str, cwd: Path, env: dict[str, str], answers: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one README line with bash, the venv's crm-ledger first on the PATH (``answers``:
    what a person would type at its prompts)."""
    return subprocess.run(
        ["/bin/bash", "-c", command],
        cwd=cwd,
        env=full_env(env),
        input=answers,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def full_env(env: dict[str, str]) -> dict[str, str]:
    """The environment a README line runs in."""
    return {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def written_file(command: str, cwd: Path) -> Path | None:
    """The file a line writes (``--out FILE`` or ``> FILE``), if any."""
    m = re.search(r"(?:--out|--chart|>)\s+(\S+)", command.split(" #", maxsplit=1)[0])
    return cwd / m.group(1) if m else None


def run_refusing(example: Example, cwd: Path, env: dict[str, str], refusal: str) -> list[str]:
    """Run every command of ``example``: one whose comment says "refused" must exit 1 with
    one line starting with ``refusal``; every other must succeed and print something. Their
    outputs, in order."""
    outputs = []
    for command in example.commands():
        result = shell(command, cwd, env)
        where = f"README line {example.line}: {command}"
        if "# refused" in command:
            assert result.returncode == 1, f"{where}\n{result.stdout}{result.stderr}"
            lines = [x for x in result.stderr.splitlines() if not x.startswith("{")]
            assert len(lines) == 1, f"{where}\n{result.stderr}"
            assert lines[0].startswith(refusal), f"{where}\n{lines[0]}"
            outputs.append(lines[0])
            continue
        assert result.returncode == 0, f"{where}\n{result.stderr}"
        assert result.stdout.strip(), f"{where} printed nothing"
        outputs.append(result.stdout)
    return outputs
