"""Are two runs the same? Every number of summary.json and every metrics.jsonl row, times excluded.

The proof a refactor preserved behaviour: run the same fixed-step recipe on both commits, then

    python scripts/compare_runs.py runs/before runs/after [more pairs ...]

prints, per pair, how many keys and rows were compared and which differ; exit 1 if any does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# wall-clock and where-it-was-written entries differ between any two runs
SKIP = ("seconds", "time/", "tokens_per_s", "run_dir", "judge_dir", "reward_model", "resumed_from")


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(a: dict, b: dict) -> list[str]:
    fa, fb = flat(a), flat(b)
    keys = sorted(k for k in set(fa) | set(fb) if not any(s in k for s in SKIP))
    return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in keys if fa.get(k) != fb.get(k)]


def compare(a: Path, b: Path) -> bool:
    ok = True
    diff = differences(json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text()))
    print(f"{a} vs {b}: summary.json {len(diff)} difference(s)" + "".join(f"\n  {d}" for d in diff[:10]))
    ok &= not diff
    if (a / "metrics.jsonl").exists() or (b / "metrics.jsonl").exists():
        rows_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
        rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
        bad = [(ra.get("step"), d) for ra, rb in zip(rows_a, rows_b) if (d := differences(ra, rb))]
        print(f"  metrics.jsonl: {len(rows_a)} vs {len(rows_b)} rows, {len(bad)} row(s) differ"
              + "".join(f"\n  step {s}: {d[0]}" for s, d in bad[:5]))
        ok &= not bad and len(rows_a) == len(rows_b)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders, in pairs: A1 B1 [A2 B2 ...]")
    args = ap.parse_args()
    if len(args.runs) % 2:
        ap.error("run folders come in pairs")
    pairs = list(zip(args.runs[::2], args.runs[1::2]))
    ok = all([compare(Path(a), Path(b)) for a, b in pairs])
    print("ALL EQUAL" if ok else "DIFFERENCES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
