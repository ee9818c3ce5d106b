"""Every example in the README runs as written on a fresh demo ledger and gives a meaningful
answer (the Kafka ones run in tests/integration/test_readme_kafka.py, beside a broker)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.readme import Example, examples, shell, unmarked_cli_blocks, written_file

#: What some lines must say (by the line without its comment): the README's comments claim it.
EXPECTED = {
    "crm-ledger ltv C000142 --as-of checkpoint:1": "│ 13 ",
    "crm-ledger ltv C000142 --valid-at 2025-01-01": "│ 14 ",
    "crm-ledger ltv C000142": "│ 29 ",
    "crm-ledger customer find iris.berg.c000042@mail.example.org": "nothing matched",
    'crm-ledger customer find "eva mu"': "C000142",
    "crm-ledger customer find eva.murphy.c000142@mail.example.org": "C000142",
    "crm-ledger audit verify": "intact",
    "crm-ledger status": "stored_events",
}
SEEN: set[str] = set()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo ledger, built by the README's own setup block."""
    folder = tmp_path_factory.mktemp("readme")
    env = {"CRM_LEDGER_DATA_DIR": str(folder / "ledger")}
    for example in examples("demo-setup"):
        for command in example.commands():
            result = shell(command, folder, env)
            assert result.returncode == 0, f"README line {example.line}: {command}\n{result.stderr}"
    return {"folder": folder, "env": env}


def test_every_cli_block_in_the_readme_is_marked_and_run() -> None:
    assert unmarked_cli_blocks() == []
    every = ("demo", "demo-setup", "cdnow", "python", "kafka", "kafka-python", "console")
    every += ("postgres-roles", "kafka-acls")
    assert {e.kind for e in examples(*every)} == set(every)
    assert sum(len(e.commands()) for e in examples("demo")) >= 40


@pytest.mark.parametrize("example", examples("demo"), ids=lambda e: f"line-{e.line}")
def test_demo_examples_run_as_written(demo: dict[str, Any], example: Example) -> None:
    _run_all(example, demo["folder"], demo["env"])


def test_cdnow_examples_run_as_written(tmp_path: Path) -> None:
    source = Path(os.environ.get("CRM_LEDGER_CDNOW_DIR", "")) / "CDNOW_sample.txt"
    if not source.is_file():
        pytest.fail("CRM_LEDGER_CDNOW_DIR must name the folder `make cdnow` fills")
    shutil.copy(source, tmp_path / "CDNOW_sample.txt")
    [example] = examples("cdnow")
    outputs = _run_all(example, tmp_path, {})
    assert "-9582.4" in outputs[2]  # the published BG/NBD fit of the CDNOW sample


def test_every_expected_answer_was_checked() -> None:
    """Runs after the demo examples: a README edit cannot drop a checked line unnoticed."""
    assert set(EXPECTED) <= SEEN


def test_the_python_example_runs_as_written(tmp_path: Path) -> None:
    [example] = examples("python")
    (tmp_path / "snippet.py").write_text(example.text)
    result = shell("python snippet.py", tmp_path, {"CRM_LEDGER_KEYS_DIR": str(tmp_path / "k")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "1", "lead"]


def _run_all(example: Example, cwd: Path, env: dict[str, str]) -> list[str]:
    outputs = []
    for command in example.commands():
        result = shell(command, cwd, env)
        where = f"README line {example.line}: {command}"
        assert result.returncode == 0, f"{where}\n{result.stderr}"
        written = written_file(command, cwd)
        if written is not None and "--chart" not in command:
            assert written.is_file(), where
            assert written.stat().st_size > 0, where
        else:
            assert result.stdout.strip(), f"{where} printed nothing"
        bare = command.split(" #")[0].strip()
        if bare in EXPECTED:
            SEEN.add(bare)
            assert EXPECTED[bare] in result.stdout + result.stderr, f"{where}: {EXPECTED[bare]!r}"
        outputs.append(result.stdout)
    return outputs
