"""The test broker's KRaft cluster id never reads as an option to Kafka's storage tool."""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kafka" / "cluster_id.py"


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("cluster_id", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_draw_that_would_start_with_a_dash_is_drawn_again() -> None:
    draws = iter([b"\xf8" + bytes(15), bytes(range(16))])  # the first encodes to "-AAA..."
    found = _module().cluster_id(lambda size: next(draws))
    assert found == base64.urlsafe_b64encode(bytes(range(16))).decode().rstrip("=")


def test_the_script_prints_sixteen_bytes_the_storage_tool_takes() -> None:
    ids = [_module().cluster_id() for _ in range(2000)]  # about 60 draws start with "-"
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    printed = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(printed) == 22
    assert (
        '"$root/scripts/kafka/cluster_id.py"' in (ROOT / "scripts" / "kafka_server.sh").read_text()
    )
