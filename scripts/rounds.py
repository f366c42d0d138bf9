"""Multi-round self-improvement with the infinite learning-rate schedule: generate, train, evaluate, repeat.

    python scripts/rounds.py recipes/nft/tiny_arith_rounds.yaml --rounds 3 --round-steps 200 [--compare]
        [--name NAME] [key=value ...]

Round r trains the main line from rollout step (r-1) x S to r x S (the warm-up and cool-down in round 1,
then the constant rate), then anneals over `train.lr_anneal_steps`; its `final/` is the round's model and
its held-out accuracy is measured. Round r+1 continues from the checkpoint saved where round r's annealing
started, not from the annealed weights, so no round re-warms (train.lr_schedule: infinite). Each round is
an ordinary run folder (`NAME-round1`, ...), resumable with train.resume=auto. `--compare` then trains one
run at the constant peak rate for the same total training seconds and evaluates it the same way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfimprove.recipe import load_recipe  # noqa: E402


def train(recipe: str, overrides: list[str]) -> dict:
    """One `selfimprove train` process; its summary (the run stops this script on a failure)."""
    out = subprocess.run([sys.executable, "-m", "selfimprove", "train", recipe, *overrides], cwd=ROOT)
    if out.returncode:
        sys.exit(out.returncode)
    folder = next(o.split("=", 1)[1] for o in overrides if o.startswith("log.name="))
    base = next((o.split("=", 1)[1] for o in overrides if o.startswith("log.out=")), None)
    return json.loads((Path(base) / folder / "summary.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round-steps", type=int, required=True, help="main-line rollout steps per round")
    ap.add_argument("--name", default=None, help="run folder prefix (default: the recipe's stem)")
    ap.add_argument("--compare", action="store_true", help="also one constant-rate run of the same training time")
    args, overrides = ap.parse_known_args(argv)
    args.recipe = str(Path(args.recipe).resolve())  # the rounds run from the repository root
    recipe = load_recipe(args.recipe, overrides)  # every mistake is found before the first round starts
    t, out = recipe.train, str(Path(recipe.log.out).resolve())
    if t.lr_schedule != "infinite":
        ap.error("the recipe's train.lr_schedule must be infinite")
    if recipe.log.keep_last < 2:  # the final save would prune the checkpoint the next round continues
        ap.error("log.keep_last must be >= 2 (the annealing's start and the round's end)")
    anneal = t.lr_anneal_steps // t.mini_batches
    name = args.name or Path(args.recipe).stem
    rows, own_seconds, previous = [], 0.0, None
    for r in range(1, args.rounds + 1):
        end = r * args.round_steps + anneal
        run = [f"log.out={out}", f"log.name={name}-round{r}", f"train.steps={end}", "train.max_seconds=0",
               "log.save_every=0"]
        if previous is not None:  # continue the main line where the previous round's annealing started
            run += [f"train.resume={previous}", "eval.before=false"]
        start_elapsed = json.loads((Path(previous) / "trainer_state.json").read_text())["elapsed"] if previous else 0.0
        summary = train(args.recipe, [*overrides, *run])
        own_seconds += summary["train_seconds"] - start_elapsed
        rows.append((r, end, summary.get("accuracy_after"), own_seconds))
        previous = str(Path(out) / f"{name}-round{r}" / "checkpoints" / f"step-{r * args.round_steps:06d}")
    print("round  steps  held-out accuracy  training seconds (all rounds so far)")
    for r, end, accuracy, seconds in rows:
        shown = "-" if accuracy is None else f"{accuracy:.1%}"  # eval.after=false: not measured
        print(f"{r:>5}  {end:>5}  {shown:>17}  {seconds:>8.1f}")
    if args.compare:
        summary = train(args.recipe, [*overrides, f"log.out={out}", f"log.name={name}-constant",
                                      "train.lr_schedule=constant", "train.warmup_steps=0", "train.steps=1000000",
                                      f"train.max_seconds={own_seconds:.1f}", "log.save_every=0"])
        last, const = rows[-1][2], summary.get("accuracy_after")
        print(f"constant rate, same training time ({summary['train_seconds']:.1f} s, {summary['steps']} steps): "
              f"held-out accuracy {'-' if const is None else f'{const:.1%}'}; the rounds' last: "
              f"{'-' if last is None else f'{last:.1%}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
