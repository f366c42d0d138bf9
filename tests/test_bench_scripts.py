"""scripts/bench_scaling.py, scripts/race.py, scripts/bench_vs_trl.py: the smoke run's table, the ratio
line, the variant syntax and the EOS calibration of the random models."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_scaling  # noqa: E402
import bench_vs_trl  # noqa: E402
import race  # noqa: E402


@pytest.mark.slow  # four subprocesses (two cells, our default and a variant): ~40 s of CPU
def test_bench_scaling_quick_prints_a_table_of_positive_numbers(tmp_path):
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/bench_scaling.py"), "--quick", "--no-trl",
                           "--steps", "1", "--warmup", "1", "--out", str(out),
                           "--variant", "same:train.threads=2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:8] == ["prompts", "samples", "max tokens", "model", "mean len", "ours s/step", "TRL s/step",
                        "TRL/ours"]
    assert head[-1] == "same s/step (x ours)"
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [r[:4] for r in rows] == [["4", "4", "8", "tiny"], ["4", "4", "16", "r1m"]]
    for r in rows:
        length, ours, mb = float(r[4]), float(r[5]), float(r[8])
        assert 1 <= length <= int(r[2]) and ours > 0 and mb > 100
        assert r[6] == "failed"  # --no-trl: no TRL side
        assert float(r[-1].split()[0]) > 0 and r[-1].endswith("x)")
    result = json.loads(out.read_text())
    assert [c["model"] for c in result["cells"]] == ["tiny", "r1m"]
    assert set(result["cells"][0]["sides"]) == {"ours", "same"}
    assert result["cells"][1]["sides"]["ours"]["phases"]["time/generate"] > 0


def test_the_grid_varies_one_axis_at_a_time_around_the_base():
    cells = bench_scaling.cells(quick=False)
    assert cells[0] == {"prompts": 8, "n": 8, "tokens": 64, "model": "tiny"}
    assert len(cells) == len({json.dumps(c, sort_keys=True) for c in cells}) == 10
    assert {c["prompts"] for c in cells} == {8, 32, 128} and {c["n"] for c in cells} == {4, 8, 16}
    assert {(c["tokens"], c["model"]) for c in cells if c["model"] == "r1m"} == {(8, "r1m"), (64, "r1m"), (256, "r1m")}
    assert all(c["tokens"] == 64 for c in cells if c["model"] in ("r10m", "r50m"))


@pytest.mark.parametrize("cap", [8, 64, 256])
def test_the_eos_probability_gives_a_mean_length_of_a_third_of_the_cap(cap):
    p = bench_scaling.eos_probability(cap, cap / 3)
    assert (1 - (1 - p) ** cap) / p == pytest.approx(cap / 3, rel=1e-6)
    assert 0 < p < 1 and (cap > 8 or p > 0.2)


def test_variants_are_parsed_into_overrides():
    assert bench_vs_trl.parse_variant("packed:train.packing=true") == ("packed", ["train.packing=true"])
    assert bench_vs_trl.parse_variant("both:train.packing=true, generation.max_staleness=1") == (
        "both", ["train.packing=true", "generation.max_staleness=1"])
    for bad in ("packed", "packed:", ":train.packing=true", "packed:train.packing"):
        with pytest.raises(Exception, match="NAME:section.key=value"):
            bench_vs_trl.parse_variant(bad)


def test_quickstart_shape_is_the_quickstart_recipe():
    w = bench_vs_trl.SHAPES["quickstart"]
    assert (w.prompts, w.n, w.new_tokens, w.lr, w.steps) == (16, 8, 8, 1e-4, 100)


def test_race_marks_are_fine_early_and_end_at_the_budget():
    assert race.marks(60) == [2, 4, 6, 8, 10, 15, 20, 30, 45, 60]
    assert race.marks(5) == [2, 4, 5]
    assert race.marks(300)[-4:] == [120, 180, 240, 300]


def test_race_ratio_line_parses():
    curves = {"trl": [(0, 0.2), (4.1, 0.25), (8.0, 0.31)], "grpo": [(0, 0.2), (4.0, 0.30)],
              "nft": [(0, 0.2), (6.0, 0.29), (9.0, 0.35)]}
    line = race.ratio_line(curves, 10.0, 60)
    assert line == "ratio: TRL reaches +10.0 points at 8.0 s, selfimprove grpo at 4.0 s (2.00x), nft at 9.0 s (0.89x)"
    assert race.first_reaching(curves["nft"], 10.0) == 9.0 and math.isclose(race.first_reaching(curves["trl"], 5.0), 4.1)
    slow = {"trl": [(0, 0.2), (60, 0.25)], "grpo": [(0, 0.2), (3.0, 0.31)], "nft": [(0, 0.2), (60, 0.2)]}
    assert race.ratio_line(slow, 10.0, 60) == ("ratio: TRL does not reach +10.0 points within 60 s, "
                                                "selfimprove grpo at 3.0 s, selfimprove nft not either")
