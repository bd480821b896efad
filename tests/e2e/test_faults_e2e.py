"""The fault suite through the real CLI: kill -9 during training or a cache build, then a
rerun that equals the uninterrupted one; steps without response tokens; an unwritable cache
folder. Full fine-tuning, so that two runs start from the same weights (Axolotl's LoRA
init differs from run to run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from axolotl_dskd.assets.fetch import write_jsonl
from tests.tiny import base_config, cli_env, refused, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

PROJECTOR = "dskd_projector.safetensors"
STEPS = {"micro_batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": 8, "save_steps": 2}


def _run(args: list[str], cfg: dict, workdir: Path) -> subprocess.CompletedProcess:
    result = run_cli(args, cfg, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def _killed_when(args: list[str], cfg: dict, workdir: Path, ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start `args cfg.yml` in its own process group and SIGKILL the whole group as soon as
    `ready()` (`axolotl train` starts the trainer as a child process: killing only the
    wrapper would leave it running)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    process = subprocess.Popen(
        [*args, str(path)],
        cwd=workdir,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"{args} ended (rc {process.returncode}) before it was killed"
        assert time.monotonic() < deadline, f"not ready to kill after {timeout} s"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _history(run_dir: Path) -> list[dict]:
    last = max(run_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in state if "loss" in entry]


def _assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    got, expected = _history(resumed), _history(uninterrupted)
    assert [entry["step"] for entry in got] == [entry["step"] for entry in expected]
    for left, right in zip(got, expected, strict=True):
        for key in ("loss", "grad_norm", "kd_loss"):
            assert left[key] == pytest.approx(right[key], rel=1e-6), (left["step"], key)
    assert torch.equal(load_file(resumed / PROJECTOR)["weight"], load_file(uninterrupted / PROJECTOR)["weight"])
    model, reference = load_file(resumed / "model.safetensors"), load_file(uninterrupted / "model.safetensors")
    assert all(torch.allclose(model[name], reference[name], atol=1e-6) for name in reference)


@pytest.mark.parametrize("teacher", ["live", "cached"])
def test_kill_9_during_training_then_auto_resume_equals_the_uninterrupted_run(tiny, tmp_path, teacher) -> None:
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path) | STEPS
    cfg["auto_resume_from_checkpoints"] = True
    if teacher == "cached":
        cfg |= {"dskd_teacher_cache": str(tmp_path / "cache"), "dskd_teacher_cache_dtype": "float32"}
        _run(["axolotl-dskd", "cache-teacher"], cfg, tmp_path / "build")
    whole = cfg | {"output_dir": str(tmp_path / "whole")}
    _run(["axolotl", "train"], whole, tmp_path / "whole-work")
    killed = cfg | {"output_dir": str(tmp_path / "killed")}
    ready = (tmp_path / "killed" / "checkpoint-4" / PROJECTOR).exists
    _killed_when(["axolotl", "train"], killed, tmp_path / "killed-work", ready)
    assert not (tmp_path / "killed" / PROJECTOR).exists()  # it died mid-run
    resumed = _run(["axolotl", "train"], killed, tmp_path / "killed-work")
    assert "auto-resume" in resumed.stdout + resumed.stderr
    _assert_same_run(tmp_path / "killed", tmp_path / "whole")


def test_kill_9_during_a_cache_build_then_rerun_equals_a_clean_build(tiny, tmp_path) -> None:
    rows = [json.loads(line) for line in tiny.data.read_text().splitlines()] * 4
    data = write_jsonl([row | {"input": str(index)} for index, row in enumerate(rows)], tmp_path / "rows.jsonl")
    cfg = base_config(tiny.student, tiny.teacher, data, tmp_path)
    cfg["dskd_teacher_cache_dtype"] = "float32"
    command = ["axolotl-dskd", "cache-teacher", "--shard-rows", "16", "--batch-size", "1"]
    killed = cfg | {"dskd_teacher_cache": str(tmp_path / "killed")}
    _killed_when(command, killed, tmp_path / "k", lambda: any((tmp_path / "killed").glob("train-*.safetensors")))
    assert not (tmp_path / "killed" / "manifest.json").exists()  # killed before the end
    _run(command, killed, tmp_path / "k")
    clean = cfg | {"dskd_teacher_cache": str(tmp_path / "clean")}
    _run(command, clean, tmp_path / "c")
    names = sorted(path.name for path in (tmp_path / "clean").glob("*.safetensors"))
    assert names == sorted(path.name for path in (tmp_path / "killed").glob("*.safetensors"))
    assert not list((tmp_path / "killed").glob(".*"))  # no half-written file left behind
    for name in names:
        rebuilt, reference = load_file(tmp_path / "killed" / name), load_file(tmp_path / "clean" / name)
        assert rebuilt.keys() == reference.keys()
        assert all(torch.equal(rebuilt[key], reference[key]) for key in reference)


def test_steps_without_response_tokens_train_on_with_loss_zero(tiny, tmp_path) -> None:
    """A row whose prompt fills `sequence_len` (truncated) has no response token; with one
    row per micro-batch that makes a whole step of none, which trains on with loss 0."""
    rows = [json.loads(line) for line in tiny.data.read_text().splitlines()[:10]]
    rows.insert(5, rows[0] | {"instruction": " ".join(["many words"] * 400)})
    data = write_jsonl(rows, tmp_path / "rows.jsonl")
    cfg = base_config(tiny.student, tiny.teacher, data, tmp_path) | {
        "excess_length_strategy": "truncate",
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "max_steps": 11,
        "save_steps": 11,
        "sample_packing": False,
        "shuffle_merged_datasets": False,
    }
    _run(["axolotl", "train"], cfg, tmp_path)
    losses = [entry["loss"] for entry in _history(Path(cfg["output_dir"]))]
    assert len(losses) == 11 and all(value == value for value in losses)  # finite, every step logged
    assert 0.0 in losses  # the step of the truncated row
    assert (Path(cfg["output_dir"]) / PROJECTOR).is_file()  # the final model and projector were saved


def test_cache_teacher_refuses_an_unwritable_folder_before_any_work(tiny, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path)
    result = run_cli(["axolotl-dskd", "cache-teacher", "--out", str(blocker / "cache")], cfg, tmp_path)
    assert result.returncode == 2
    assert f"cache-teacher: cannot write the cache to {blocker / 'cache'}: Not a directory" in result.stdout
    assert "loading teacher" not in result.stdout + result.stderr


def _broken_teacher(tiny, out: Path, weight: str) -> tuple[Path, int]:
    """The tiny teacher with NaN in one row of `weight`: the row of the data's most frequent
    token (so the first batch that reads it meets the NaN)."""
    from collections import Counter

    from transformers import AutoModelForCausalLM

    text = " ".join(json.loads(line)["output"] for line in tiny.data.read_text().splitlines())
    token_id = Counter(tiny.tokenizer(text)["input_ids"]).most_common(1)[0][0]
    model = AutoModelForCausalLM.from_pretrained(tiny.teacher)
    with torch.no_grad():
        model.get_parameter(weight)[token_id] = float("nan")
    model.save_pretrained(out)
    tiny.tokenizer.save_pretrained(out)
    return out, token_id


@pytest.mark.parametrize(
    ("weight", "line"),
    [
        ("model.embed_tokens.weight", "dskd: the teacher's hidden states are NaN or inf at "),
        ("lm_head.weight", "dskd: the teacher's output head has NaN or inf in the rows of token ids "),
    ],
)
def test_a_teacher_that_yields_nan_stops_the_run_before_a_nan_step(tiny, tmp_path, weight: str, line: str) -> None:
    teacher, token_id = _broken_teacher(tiny, tmp_path / "teacher", weight)
    cfg = base_config(tiny.student, teacher, tiny.data, tmp_path) | {"max_steps": 6, "save_steps": 1}
    result = run_cli(["axolotl", "train"], cfg, tmp_path)
    assert result.returncode != 0
    assert line in result.stderr
    assert f"token ids {token_id}" in result.stderr
    assert "stopping before" in result.stderr
    saved = [path for path in Path(cfg["output_dir"]).rglob("*.safetensors")]
    for path in saved:
        assert all(torch.isfinite(tensor).all() for tensor in load_file(path).values()), path


def test_a_resume_that_changes_the_teacher_or_the_alignment_stops_with_one_line(tiny, tmp_path) -> None:
    """The checkpoint's projector was fitted to one teacher and alignment: resuming against
    another stops before any model loads, unless dskd_resume_with_changes says it is meant."""
    from tests.tiny import build_llama

    same_shape = tmp_path / "same_shape"
    build_llama(same_shape, tiny.teacher_tokenizer, hidden=48, layers=3, seed=11)
    wider = tmp_path / "wider"
    build_llama(wider, tiny.teacher_tokenizer, hidden=64, layers=2, seed=12)
    cfg = base_config(tiny.student, tiny.cross_teacher, tiny.data, tmp_path / "first")
    cfg |= {"max_steps": 2, "save_steps": 2}
    _run(["axolotl", "train"], cfg, tmp_path / "first")
    checkpoint = Path(cfg["output_dir"]) / "checkpoint-2"
    assert json.loads((checkpoint / "dskd_run.json").read_text())["dskd_alignment"] == "exact"
    resume = cfg | {"resume_from_checkpoint": str(checkpoint), "max_steps": 3}

    def stops(changes: dict, line: str, before_loading: bool = True) -> None:
        result = run_cli(["axolotl", "train"], resume | changes, tmp_path / "resume")
        assert result.returncode != 0
        assert line in result.stderr, result.stderr[-3000:]
        assert ("Loading weights" not in result.stdout + result.stderr) == before_loading

    stops(
        {"dskd_alignment": "eta_strict"},
        f"resume_from_checkpoint: {checkpoint} was trained with another setup (dskd_alignment: 'exact' in the "
        "checkpoint, 'eta_strict' in this run), and its t2s projector fits that one; start afresh with a new "
        "output_dir, or set dskd_resume_with_changes: true to resume it on purpose",
    )
    stops({"dskd_teacher_model": str(same_shape)}, f"(dskd_teacher_model: '{tiny.cross_teacher}' in the checkpoint")
    accepted = resume | {"dskd_teacher_model": str(same_shape), "dskd_resume_with_changes": True}
    result = _run(["axolotl", "train"], accepted, tmp_path / "resume")
    assert f"dskd: resuming {checkpoint} although it was trained with another setup" in result.stdout + result.stderr
    stops(
        {"dskd_teacher_model": str(wider), "dskd_resume_with_changes": True, "max_steps": 4},
        f"resume_from_checkpoint: the t2s projector in {checkpoint} maps hidden size 48 to 32, this run's teacher "
        "and student need 64 to 32: it was trained with another model; start afresh with a new output_dir",
        before_loading=False,  # accepted on purpose: the shapes are known once the models are built
    )


def test_teacher_rows_past_the_teachers_context_are_cut_and_counted(tiny, tmp_path) -> None:
    """Across tokenizers a row the student reads within sequence_len can be longer for the
    teacher: here 64 positions against rows of about 100 teacher tokens."""
    from tests.tiny import build_llama

    short = tmp_path / "short_teacher"
    build_llama(short, tiny.teacher_tokenizer, hidden=48, layers=2, seed=13, context=64)
    cfg = base_config(tiny.student, short, tiny.data, tmp_path) | {"max_steps": 2, "save_steps": 2}
    result = _run(["axolotl", "train"], cfg, tmp_path)
    assert "teacher row(s) so far were longer than the teacher's context (max_position_embeddings 64;" in (
        result.stdout + result.stderr
    )
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in _history(Path(cfg["output_dir"])))


def test_a_dataset_without_response_tokens_is_refused_before_training(tiny, tmp_path) -> None:
    """Every output empty (template-free segments): the run would train on nothing."""
    rows = [
        {"segments": [{"label": False, "text": json.loads(line)["instruction"]}, {"label": True, "text": ""}]}
        for line in tiny.data.read_text().splitlines()[:12]
    ]
    data = write_jsonl(rows, tmp_path / "empty.jsonl")
    cfg = base_config(tiny.student, tiny.teacher, data, tmp_path) | {"max_steps": 2}
    cfg["datasets"] = [{"path": str(data), "type": "input_output", "ds_type": "json"}]
    assert (
        "datasets: none of the 12 train rows has a response token to train on (every label is masked), so the run "
        "would train on nothing"
    ) in refused(["axolotl", "train"], cfg, tmp_path)
    assert not list(Path(cfg["output_dir"]).glob("checkpoint-*"))
