#!/usr/bin/env python3
"""Sizes that keep the source readable (HOUSE_STYLE.md): modules under 600 lines, functions
under 50. Prints every module and function over the limits, and the median function length.

    python scripts/check_sizes.py            report
    python scripts/check_sizes.py --strict   report, and exit 1 if anything is over

The last line is a JSON object: modules_over, functions_over, median_function_lines.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "crm_ledger"
MODULE_LIMIT = 600
FUNCTION_LIMIT = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="exit 1 if anything is over")
    args = parser.parse_args()
    modules, functions, lengths = [], [], []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT.parent)
        count = len(text.splitlines())
        if count > MODULE_LIMIT:
            modules.append((str(name), count))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                lengths.append(size)
                if size > FUNCTION_LIMIT:
                    functions.append((f"{name}:{node.lineno} {node.name}", size))
    for where, size in sorted(modules, key=lambda m: -m[1]):
        print(f"module   {where}: {size} lines (limit {MODULE_LIMIT})")
    for where, size in sorted(functions, key=lambda f: -f[1]):
        print(f"function {where}: {size} lines (limit {FUNCTION_LIMIT})")
    median = statistics.median(lengths) if lengths else 0
    print(f"{len(modules)} modules and {len(functions)} functions over; median function {median}")
    print(
        json.dumps(
            {
                "modules_over": len(modules),
                "functions_over": len(functions),
                "median_function_lines": median,
            }
        )
    )
    if args.strict and (modules or functions):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
