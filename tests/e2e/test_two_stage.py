"""The two-stage recipe through the real CLI: stage 1 fine-tunes the teacher with plain
Axolotl (LoRA), stage 2 distils with dskd_teacher_adapter pointing at stage 1's output;
the teacher-fit check before training and the `teacher-fit` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from axolotl_dskd.assets.fetch import write_jsonl
from tests.tiny import base_config, lora, run_cli

pytestmark = pytest.mark.e2e

FIT_HEADER = "dskd: teacher fit before training"
WARNING = "dskd: the teacher does not fit this data"


def _history(run_dir: Path) -> list[dict]:
    last = max(run_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())["log_history"]


def _train(cfg: dict, workdir: Path) -> tuple[Path, str]:
    result = run_cli(["axolotl", "train"], cfg, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return Path(cfg["output_dir"]), result.stdout + result.stderr


@pytest.fixture(scope="module")
def stage1(tiny, tmp_path_factory) -> Path:
    """Stage 1: the teacher fine-tuned on the training rows with plain Axolotl (no plugin)."""
    workdir = tmp_path_factory.mktemp("stage1")
    cfg = lora(base_config(tiny.teacher, tiny.teacher, tiny.data, workdir))
    for key in ("plugins", "dskd_teacher_model"):
        cfg.pop(key)
    cfg |= {"learning_rate": 0.01, "max_steps": 40, "save_steps": 40, "micro_batch_size": 4}
    run_dir, _ = _train(cfg, workdir)
    assert (run_dir / "adapter_model.safetensors").is_file()
    return run_dir


def _stage2(tiny, workdir: Path, **overrides) -> dict:
    cfg = lora(base_config(tiny.student, tiny.teacher, tiny.data, workdir))
    return cfg | {"max_steps": 3, "save_steps": 3, "dskd_teacher_fit_rows": 16} | overrides


@pytest.mark.every_release
def test_stage2_trains_from_the_adapted_teacher_like_from_a_merged_copy(tiny, stage1, tmp_path) -> None:
    merged = tmp_path / "merged-teacher"
    base = AutoModelForCausalLM.from_pretrained(tiny.teacher)
    PeftModel.from_pretrained(base, str(stage1)).merge_and_unload().save_pretrained(merged)
    tiny.tokenizer.save_pretrained(merged)

    adapted_dir, adapted_log = _train(_stage2(tiny, tmp_path / "a", dskd_teacher_adapter=str(stage1)), tmp_path / "a")
    merged_dir, _ = _train(_stage2(tiny, tmp_path / "m", dskd_teacher_model=str(merged)), tmp_path / "m")
    base_dir, base_log = _train(_stage2(tiny, tmp_path / "b"), tmp_path / "b")

    adapted, merged_run, base_run = (
        [entry for entry in _history(run) if "loss" in entry] for run in (adapted_dir, merged_dir, base_dir)
    )
    for got, expected in zip(adapted, merged_run, strict=True):
        for key in ("teacher_ce", "teacher_acc"):  # the teacher alone, on the same batches
            assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    for key in ("loss", "kd_loss"):
        # the first step sees the same student; later steps follow Adam, which turns last-bit
        # differences of near-zero gradients into whole steps (about 1e-4 apart after 3 steps)
        assert adapted[0][key] == pytest.approx(merged_run[0][key], rel=1e-5), key
        assert adapted[-1][key] == pytest.approx(merged_run[-1][key], rel=1e-3), key
    assert adapted[0]["teacher_ce"] < base_run[0]["teacher_ce"] - 0.1  # stage 1 taught the teacher the data
    assert FIT_HEADER in adapted_log and FIT_HEADER in base_log
    assert "teacher_acc" in adapted_log
    # the adapter stays with the teacher: the student's checkpoint is the student's own LoRA
    assert not any("teacher" in path.name for path in adapted_dir.rglob("*"))


ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n{output}"
)


def _fitted_teacher(tiny, records: list[dict], out: Path) -> Path:
    """The tiny teacher trained until it knows these rows as Axolotl's alpaca template
    renders them (a few seconds): a teacher that fits the data."""
    rows = len(records)
    encoded = [tiny.tokenizer(ALPACA.format(**row), return_tensors="pt")["input_ids"] for row in records]
    model = AutoModelForCausalLM.from_pretrained(tiny.teacher)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30 * rows):
        ids = encoded[step % rows]
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tiny.tokenizer.save_pretrained(out)
    return out


def test_preflight_warns_about_a_teacher_that_does_not_fit_and_not_about_one_that_does(tiny, tmp_path) -> None:
    base_dir, base_log = _train(_stage2(tiny, tmp_path / "b", max_steps=1, save_steps=1), tmp_path / "b")
    assert WARNING in base_log and "dskd_teacher_adapter" in base_log
    recorded = json.loads((base_dir / "dskd_fit_check.json").read_text())
    assert recorded["fits"] is False and recorded["rows"] == 16 and recorded["teacher_acc"] < 0.6
    records = [json.loads(line) for line in tiny.data.read_text().splitlines()[:16]]
    data = write_jsonl(records, tmp_path / "rows.jsonl")
    fitted = _stage2(tiny, tmp_path / "f", dskd_teacher_model=str(_fitted_teacher(tiny, records, tmp_path / "fitted")))
    fitted["datasets"] = [{"path": str(data), "type": "alpaca", "ds_type": "json"}]
    result = run_cli(["axolotl-dskd", "teacher-fit", "--rows", "16"], fitted, tmp_path / "f")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["fits"] and report["teacher_acc"] >= 0.6 and report["teacher_ce"] < report["student_ce"]
    assert report["rows"] == 16 and WARNING not in result.stdout + result.stderr
    assert "teacher_acc" in result.stdout
    assert not list((tmp_path / "f").rglob("adapter_model.safetensors"))  # the command does not train


@pytest.mark.every_release
def test_adapter_on_a_4bit_teacher_and_across_tokenizers(tiny, tiny_adapters, tmp_path) -> None:
    quantized = _stage2(
        tiny,
        tmp_path / "q",
        dskd_teacher_adapter=str(tiny_adapters.teacher),
        dskd_teacher_load_in_4bit=True,
        max_steps=2,
        save_steps=2,
    )
    cross = _stage2(
        tiny,
        tmp_path / "c",
        dskd_teacher_model=str(tiny.cross_teacher),
        dskd_teacher_adapter=str(tiny_adapters.cross_teacher),
        max_steps=2,
        save_steps=2,
    )
    for cfg, workdir in ((quantized, tmp_path / "q"), (cross, tmp_path / "c")):
        run_dir, log = _train(cfg, workdir)
        assert "applying teacher adapter" in log
        logged = [entry for entry in _history(run_dir) if "loss" in entry]
        assert all(0.0 <= entry["teacher_acc"] <= 1.0 and entry["teacher_ce"] > 0 for entry in logged)
