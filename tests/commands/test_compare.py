"""`axolotl-dskd compare`: fair arms (the SFT arm is the DSKD config less the plugin), the
refusals that keep a comparison honest, the paired interval, and a real run that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from axolotl_dskd.assets.fetch import gsm_symbolic_rows, write_jsonl
from axolotl_dskd.commands.compare import (
    MIN_HELD_OUT_ROWS,
    CompareError,
    Split,
    arm_config,
    checked_config,
    split_rows,
)
from axolotl_dskd.commands.paired import paired_gap, verdict
from tests.tiny import base_config, lora, run_cli


def _config(tiny, tmp_path: Path, rows: int = 70, teacher: Path | None = None) -> dict:
    data = write_jsonl(gsm_symbolic_rows(size=rows, seed=5), tmp_path / "rows.jsonl")
    cfg = lora(base_config(tiny.student, teacher or tiny.teacher, data, tmp_path))
    return cfg | {"sequence_len": 1024, "max_steps": 2, "save_steps": 2, "dskd_teacher_fit_rows": 4}


def test_the_sft_arm_is_the_dskd_config_less_the_plugin_and_every_arm_shares_rows_and_seed(tiny, tmp_path) -> None:
    cfg = _config(tiny, tmp_path) | {"dskd_kd_ratio": 0.7}
    split = Split(tmp_path / "train.jsonl", tmp_path / "held.jsonl", [])
    dskd, sft = (arm_config(cfg, arm, 3, split, tmp_path / "out") for arm in ("dskd", "sft"))
    assert not any(key.startswith("dskd_") for key in sft) and "plugins" not in sft
    differing = {key for key in dskd.keys() | sft.keys() if dskd.get(key) != sft.get(key)}
    per_arm = {"plugins", "output_dir", "dataset_prepared_path"}
    assert differing == {key for key in dskd if key.startswith("dskd_")} | per_arm
    assert dskd["seed"] == sft["seed"] == 3 and dskd["datasets"] == sft["datasets"]
    assert arm_config(cfg, "vanilla_kd", 3, split, tmp_path)["dskd_method"] == "vanilla_kd"


def test_held_out_rows_are_removed_from_training_and_recorded_by_content(tiny, tmp_path) -> None:
    split = split_rows(_config(tiny, tmp_path), tmp_path / "out", 50, None)
    train, held_out = split.train.read_text().splitlines(), split.held_out.read_text().splitlines()
    assert (len(train), len(held_out), len(split.held_out_hashes)) == (20, 50, 50)
    assert not set(train) & set(held_out)


def test_unfair_or_unreadable_comparisons_are_refused_with_one_line(tiny, tmp_path) -> None:
    cfg = _config(tiny, tmp_path)
    with pytest.raises(CompareError, match="^compare: the config has no axolotl_dskd.DSKDPlugin in `plugins:`"):
        checked_config({key: value for key, value in cfg.items() if key != "plugins"})
    with pytest.raises(CompareError, match="one local .json/.jsonl dataset; this config has 2 dataset"):
        checked_config(cfg | {"datasets": cfg["datasets"] * 2})
    with pytest.raises(CompareError, match="is the plugin's own strategy, which plain SFT cannot use"):
        checked_config(cfg | {"datasets": [cfg["datasets"][0] | {"type": "axolotl_dskd.integration.chat_template"}]})
    with pytest.raises(CompareError, match="^compare: resume_from_checkpoint: every arm must start from the same"):
        checked_config(cfg | {"resume_from_checkpoint": "somewhere"})
    with pytest.raises(CompareError) as caught:
        split_rows(cfg, tmp_path / "out", MIN_HELD_OUT_ROWS - 1, None)
    assert str(caught.value) == (
        f"compare: {MIN_HELD_OUT_ROWS - 1} held-out rows are too few for the paired interval to mean anything; "
        f"use at least {MIN_HELD_OUT_ROWS} (--held-out-last N or --held-out FILE)"
    )
    rows = Path(cfg["datasets"][0]["path"]).read_text().splitlines()
    leaked = tmp_path / "held.jsonl"
    leaked.write_text("\n".join(rows[:2] + [json.dumps({"instruction": f"q{i}", "output": "a"}) for i in range(60)]))
    with pytest.raises(CompareError, match=f"2 held-out rows of {leaked} are also in the training data"):
        split_rows(cfg, tmp_path / "out", None, leaked)


def test_the_paired_interval_and_the_verdict() -> None:
    tie = paired_gap([[0.1, -0.1, 0.3, -0.3] * 15, [0.1, -0.1, -0.3, 0.3] * 15])
    assert tie.mean == pytest.approx(0.0) and tie.low < 0 < tie.high
    said = verdict("dskd", "sft", tie, "x", lower_is_better=False)
    assert said.endswith("not distinguishable on 60 rows; more held-out rows or seeds would tell")
    better = paired_gap([[1.0 + 0.01 * (i % 5) for i in range(60)]])
    assert better.excludes_zero() and better.low > 0.99
    assert verdict("dskd", "sft", better, "rouge", False).endswith("dskd is better than sft on these rows")
    assert verdict("dskd", "sft", better, "CE", lower_is_better=True).endswith("dskd is worse than sft on these rows")


@pytest.mark.e2e
@pytest.mark.parametrize("teacher", ["same_vocabulary", "cross_tokenizer"])
def test_a_compare_run_reports_every_arm_with_its_gap_and_resumes_without_training(tiny, tmp_path, teacher) -> None:
    cfg = _config(tiny, tmp_path, teacher=tiny.teacher if teacher == "same_vocabulary" else tiny.cross_teacher)
    out = tmp_path / "out"
    first = run_cli(["axolotl-dskd", "compare", "--held-out-last", "50", "--out", str(out)], cfg, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    record = json.loads((out / "compare.json").read_text())
    assert set(record["arms"]) == {"sft", "dskd"} and record["held_out_rows"] == 50
    gap = record["arms"]["dskd"]["gap_to_sft"]
    assert gap["low"] <= gap["mean"] <= gap["high"] and gap["rows"] == 50
    assert "untrained student" in record["reference"] and (out / "compare.png").is_file()
    assert "| dskd |" in first.stdout and "against sft (interval" in first.stdout
    trained = sorted(path.stat().st_mtime for path in (out / "records").glob("*.json"))
    again = run_cli(["axolotl-dskd", "compare", "--held-out-last", "50", "--out", str(out)], cfg, tmp_path)
    assert again.returncode == 0
    assert "compare: dskd-s0:" not in again.stdout  # read from its record, not retrained
    assert sorted(path.stat().st_mtime for path in (out / "records").glob("*.json")) == trained
    assert json.loads((out / "compare.json").read_text())["arms"] == record["arms"]
