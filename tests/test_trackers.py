"""Experiment trackers (log.report_to) through accelerate's tracking, and the policy's token entropy."""

import importlib.util
import json
import math
import struct
import sys
from pathlib import Path

import datasets
import pytest
import torch

from selfimprove.batch import collate, masked_entropy, token_logprobs
from selfimprove.cli import main
from selfimprove.config import LogConfig
from selfimprove.distributed import make_accelerator
from selfimprove.errors import UserError
from selfimprove.loop import run
from selfimprove.options import Text, bind
from selfimprove.recipe import load_recipe
from selfimprove.runlog import RunLog
from selfimprove.trackers import build, completions, flat_config, markdown_table, scalars
from tests.conftest import make_trace


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, with its caches and settings under tmp_path (nothing outside the test's folder)."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "wb_config",
                       "WANDB_CACHE_DIR": tmp_path / "wb_cache", "WANDB_DATA_DIR": tmp_path / "wb_data"}.items():
        monkeypatch.setenv(key, str(value))


# --------------------------------------------------------------------------- entropy


def test_masked_entropy_matches_worked_numbers():
    # position 0: uniform over 4 -> ln 4; position 1: (1/2, 1/4, 1/4, 0) -> 1.5 ln 2 (a zero probability adds 0,
    # not nan); position 2: one token certain -> 0; position 3 is masked out (its entropy, ln 4, must not count)
    probs = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [0.5, 0.25, 0.25, 0.0], [1.0, 0.0, 0.0, 0.0],
                           [0.25, 0.25, 0.25, 0.25]]])
    total, count = masked_entropy(torch.log(probs), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert count == 3
    assert total == pytest.approx(math.log(4) + 1.5 * math.log(2), abs=1e-6)


class FixedLogits(torch.nn.Module):
    """A model whose next-token logits are given: row r, position p -> logits[r, p]."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.logits[:, : input_ids.shape[1]]})()


def test_token_logprobs_adds_the_entropy_of_trained_tokens_only():
    # prompt (1, 2) then completion (3, 4): targets at columns 1 and 2 are trained, column 0 (prompt) is not
    tr = make_trace(prompt_ids=(1, 2), completion_ids=(3, 4))
    batch = collate([tr], pad_id=0)
    assert batch["mask"].tolist() == [[0.0, 1.0, 1.0]]
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 0.0],  # prompt column: uniform over 5, must not count
                            [0.0, 0.0, 0.0, 0.0, -math.inf],  # uniform over 4: ln 4
                            [math.log(2), 0.0, 0.0, -math.inf, -math.inf],  # (1/2, 1/4, 1/4): 1.5 ln 2
                            [0.0] * 5]])
    stats = {"entropy_sum": 0.0, "entropy_tokens": 0}
    lp = token_logprobs(FixedLogits(logits), batch, stats)
    assert lp.shape == (1, 3)
    assert stats["entropy_tokens"] == 2
    assert stats["entropy_sum"] == pytest.approx(math.log(4) + 1.5 * math.log(2), abs=1e-5)


# --------------------------------------------------------------------------- options and pieces


@pytest.mark.parametrize("value,expect", [
    (Text("tensorboard"), ["tensorboard"]), (Text("[tensorboard, wandb]"), ["tensorboard", "wandb"]),
    (Text("none"), []), (Text("[]"), []), ("wandb", ["wandb"]), (["wandb", "trackio"], ["wandb", "trackio"]),
])
def test_report_to_takes_a_list_one_name_or_none(value, expect):
    assert bind(LogConfig, {"report_to": value}, "log").report_to == expect


def test_scalars_skip_none_text_and_flags_and_flatten_mappings():
    row = {"step": 3, "reward": 0.5, "rewards/chrf": None, "n": 4, "model": "tiny", "ok": True,
           "eval_rewards_after": {"math_correct": 0.25}}
    assert scalars(row) == {"reward": 0.5, "n": 4, "eval_rewards_after/math_correct": 0.25}
    assert scalars({"accuracy_after": 0.5}, "summary/") == {"summary/accuracy_after": 0.5}


def test_completions_table_has_every_named_reward_and_markdown_escapes():
    a = make_trace("4", prompt="2+2=", reward=1.0, rewards={"fmt": 1.0, "math": 1.0})
    b = make_trace("x|y", prompt="1+1=", reward=0.0, rewards={"fmt": 0.0, "math": None})
    columns, rows = completions([a, b], 7)
    assert columns == ["step", "prompt", "completion", "reward", "fmt", "math"]
    assert rows == [[7, "user: 2+2=", "4", 1.0, 1.0, 1.0], [7, "user: 1+1=", "x|y", 0.0, 0.0, None]]
    md = markdown_table(columns, rows).splitlines()
    assert md[0] == "| step | prompt | completion | reward | fmt | math |" and len(md) == 4
    assert md[3] == "| 7 | user: 1+1= | x\\|y | 0 | 0 |  |"


def test_flat_config_is_one_level_of_plain_values(write_recipe):
    flat = flat_config(load_recipe(write_recipe(), ["log.report_to=tensorboard"]))
    assert flat["train.lr"] == 1e-3 and flat["generation.n"] == 4 and flat["algorithm.name"] == "nft"
    assert json.loads(flat["rewards"])[0]["fn"] == "number_format"
    assert flat["log.report_to"] == '["tensorboard"]'
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())
    assert "data.eval" not in flat  # None: left out
    recipe = load_recipe(write_recipe())
    recipe.data.train = datasets.Dataset.from_list([{"prompt": "1+1=", "answer": "2"}])  # as in the Python API
    assert flat_config(recipe)["data.train"] == "<Dataset of 1 rows>"


def test_a_tracker_that_is_not_installed_is_one_line_naming_the_package(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr("selfimprove.trackers.importlib.util.find_spec", lambda n: None if n == "wandb" else real(n))
    with pytest.raises(UserError, match=r"log.report_to: wandb is not installed \(pip install wandb\)"):
        build(LogConfig(report_to=["tensorboard", "wandb"]), tmp_path / "run")


# --------------------------------------------------------------------------- whole runs


def tensorboard_scalars(folder: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def wandb_records(path: Path):
    """W&B's offline datastore (run-*.wandb), whose Python reader wandb no longer ships (wandb-core reads it
    in Go; offline runs write no files/wandb-summary.json): LevelDB-log framing (32 KiB blocks, 7-byte record
    headers: crc32c, length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4) of wandb's own `Record` protobuf messages."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        parts, pos = parts + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_history(path: Path) -> tuple[dict[int, dict], dict]:
    """({step: {key: value}} of every wandb.log, the run's config) from the offline datastore."""
    history, config = {}, {}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            items = {}
            for i in r.history.item:  # a logged object (the table) comes as nested keys: completions/_type, ...
                *outer, last = [i.key] if i.key else list(i.nested_key)
                target = items
                for key in outer:
                    target = target.setdefault(key, {})
                target[last] = json.loads(i.value_json)
            history.setdefault(items["_step"], {}).update(items)
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
    return history, config


def test_a_run_reports_to_tensorboard_and_wandb(tmp_path, write_recipe, offline_wandb):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    p = write_recipe(eval={"before": False, "after": True}, log={"traces_every": 2})
    recipe = load_recipe(p, ["log.report_to=[tensorboard, wandb]", "log.save_final=false"])
    summary = run(recipe, log=lambda *a: None)
    d = tmp_path / "runs" / "run"
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["entropy"] > 0 for r in rows)  # the policy's mean token entropy, in nats
    assert all(r["entropy"] <= math.log(512) for r in rows)  # at most ln(vocabulary size) of the tiny model

    # TensorBoard: the same values at the same steps, and the summary at the last step
    tb = d / "tensorboard"
    for tag in ("reward", "loss", "entropy", "rewards/math_correct"):
        got = tensorboard_scalars(tb, tag)
        assert sorted(got) == [1, 2, 3], tag
        for r in rows:
            assert got[r["step"]] == pytest.approx(r[tag], rel=1e-5, abs=1e-6), (tag, r["step"])
    assert tensorboard_scalars(tb, "summary/accuracy_after") == {3: pytest.approx(summary["accuracy_after"])}

    # W&B offline: its run folder inside the run folder, the last step's values in its summary, the table
    (wb,) = (d / "wandb").glob("offline-run-*")
    history, config = wandb_history(next(wb.glob("run-*.wandb")))
    assert sorted(history) == [1, 2, 3]
    for r in rows:
        for tag in ("reward", "loss", "entropy"):
            assert history[r["step"]][tag] == pytest.approx(r[tag]), (tag, r["step"])
    assert history[3]["summary/final_reward"] == pytest.approx(summary["final_reward"])
    assert history[3]["summary/accuracy_after"] == pytest.approx(summary["accuracy_after"])
    assert config["train.lr"] == 1e-3 and config["log.report_to"] == '["tensorboard", "wandb"]'
    # the completions table at steps 1 and 2 (traces_every=2, and always the first step), not at step 3
    assert [s for s in sorted(history) if "completions" in history[s]] == [1, 2]
    assert history[2]["completions"]["_type"] == "table-file" and history[2]["completions"]["nrows"] == 16
    table = json.loads((wb / "files" / history[2]["completions"]["path"]).read_text())
    assert table["columns"] == ["step", "prompt", "completion", "reward", "number_format", "math_correct"]
    assert len(table["data"]) == 16 and {r[0] for r in table["data"]} == {2}
    traces = [json.loads(x) for x in (d / "traces.jsonl").read_text().splitlines()][16:]  # the step-2 dump
    assert [r[2] for r in table["data"]] == [t["turns"][-1]["text"] for t in traces]
    assert [r[3] for r in table["data"]] == pytest.approx([t["reward"] for t in traces])


def test_an_unknown_tracker_is_one_line_at_load(write_recipe, capsys):
    code = main(["train", str(write_recipe()), "log.report_to=[tensorboard, tensorbord]"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and err[0].endswith(
        "r.yaml: log.report_to: unknown tracker 'tensorbord'; accepted: tensorboard, wandb, trackio, comet_ml, "
        "mlflow, aim, clearml, dvclive, swanlab (or none)")


def test_a_missing_tracker_package_stops_the_run_at_setup_with_nothing_written(tmp_path, write_recipe, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr("selfimprove.trackers.importlib.util.find_spec", lambda n: None if n == "wandb" else real(n))
    recipe = load_recipe(write_recipe(), ["log.report_to=wandb"])
    with pytest.raises(UserError, match=r"^log.report_to: wandb is not installed \(pip install wandb\)$"):
        run(recipe, log=lambda *a: None)
    assert not (tmp_path / "runs").exists()


def test_trackio_gets_the_rows_the_table_and_the_summary(tmp_path, write_recipe, monkeypatch):
    # the run folder's plumbing without training: RunLog with an Accelerator carrying trackio
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is first imported
    if "trackio" in sys.modules:
        pytest.skip("trackio was imported before TRACKIO_DIR could be set")
    pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    recipe = load_recipe(write_recipe(), ["log.report_to=trackio", "log.project=si-test"])
    log = RunLog(recipe)
    acc = make_accelerator("float32", log_with=build(recipe.log, log.path))
    log.attach(acc)
    traces = [make_trace("4", reward=1.0, rewards={"math": 1.0}), make_trace("5", idx=1, rewards={"math": 0.0})]
    log.metrics({"step": 1, "reward": 0.5, "rewards/chrf": None})
    log.traces(traces, 1)
    log.metrics({"step": 2, "reward": 0.75, "rewards/chrf": None})
    log.summary({"final_reward": 0.625, "model": "tiny"}, 2)
    acc.end_training()
    assert SQLiteStorage.get_runs("si-test") == ["run"]
    logs = SQLiteStorage.get_logs("si-test", "run")
    by_step = {}
    for entry in logs:
        by_step.setdefault(entry["step"], {}).update(entry)
    assert by_step[1]["reward"] == 0.5 and by_step[2]["reward"] == 0.75
    assert by_step[2]["summary/final_reward"] == 0.625
    assert "rewards/chrf" not in by_step[1] and "summary/model" not in by_step[2]
    assert by_step[1]["completions"]["_type"] == "trackio.table"


@pytest.mark.parametrize("recipe", ["recipes/selfj/tiny_arith.yaml", "recipes/reward_model/tiny_arith.yaml"])
def test_programs_refuse_report_to_rather_than_ignore_it(recipe):
    with pytest.raises(UserError, match=r"^.*log.report_to: experiment trackers are not wired into the selfj"):
        load_recipe(recipe, ["log.report_to=wandb"])
