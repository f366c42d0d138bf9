"""Size budgets (style.md rule 5), checked in CI: no source file over 500 lines, no function over 80,
selfimprove/loop.py at most 400. Crossing one means extracting a verb, not raising the budget.

    python scripts/check_sizes.py            # prints each breach; exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("selfimprove", "reward", "scripts", "tests")
FILE_LINES, FUNCTION_LINES, LOOP_LINES = 500, 80, 400


def breaches(root: Path = ROOT) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            text = path.read_text(encoding="utf-8")
            limit = LOOP_LINES if rel.as_posix() == "selfimprove/loop.py" else FILE_LINES
            lines = len(text.splitlines())
            if lines > limit:
                out.append(f"{rel}: {lines} lines (budget {limit})")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > FUNCTION_LINES:
                        out.append(f"{rel}:{node.lineno}: function {node.name} has {length} lines "
                                   f"(budget {FUNCTION_LINES})")
    return out


def main() -> int:
    found = breaches()
    for line in found:
        print(line)
    print(f"size budgets: {len(found)} breach(es)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
