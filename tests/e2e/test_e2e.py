"""Real Axolotl runs in a subprocess on the tiny pair: every launcher, every adapter mode."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from axolotl.core.trainers.base import AxolotlTrainer
from axolotl.integrations.base import BasePlugin
from safetensors.torch import load_file

from tests.tiny import base_config, log_history, lora, run_cli, train

pytestmark = pytest.mark.e2e

PROJECTOR = "dskd_projector.safetensors"
AXOLOTL = ["axolotl", "train"]
PYTHON_M = [sys.executable, "-m", "axolotl.cli.train"]
ACCELERATE = ["accelerate", "launch", "--num_processes", "1", "--cpu", "-m", "axolotl.cli.train"]


def _losses(run_dir: Path) -> list[float]:
    return [entry["loss"] for entry in log_history(run_dir) if "loss" in entry]


def _assert_loss_falls(run_dir: Path) -> None:
    losses = _losses(run_dir)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.02, losses


def _assert_projector_in_checkpoints(run_dir: Path, projector_lr: float) -> None:
    for checkpoint in run_dir.glob("checkpoint-*"):
        projector = load_file(checkpoint / PROJECTOR)
        assert set(projector) == {"weight"}
        optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=False)
        projector_group = optimizer["param_groups"][-1]
        assert projector_group["initial_lr"] == pytest.approx(projector_lr)
        assert len(projector_group["params"]) == 1
        assert optimizer["state"][projector_group["params"][0]]["exp_avg"].shape == projector["weight"].shape
    assert (run_dir / PROJECTOR).is_file()


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory) -> tuple[dict, Path]:
    """One uninterrupted LoRA run through `axolotl train`, shared by several tests."""
    workdir = tmp_path_factory.mktemp("lora")
    cfg = lora(base_config(tiny.student, tiny.teacher, tiny.data, workdir))
    cfg |= {"learning_rate": 0.02, "dskd_projector_lr": 0.01, "max_steps": 12, "save_steps": 6}
    return cfg, train(AXOLOTL, cfg, workdir)


@pytest.mark.xdist_group("lora_run")  # one worker trains the shared run once
@pytest.mark.every_release
def test_lora_run_learns_and_checkpoints_the_projector(lora_run) -> None:
    cfg, run_dir = lora_run
    _assert_loss_falls(run_dir)
    _assert_projector_in_checkpoints(run_dir, cfg["dskd_projector_lr"])
    assert (run_dir / "adapter_model.safetensors").is_file()
    logged = json.loads((run_dir / "checkpoint-12" / "trainer_state.json").read_text())["log_history"][0]
    for metric in ("ce_loss", "kd_loss", "t2s_ce_loss", "t2s_kd_loss", "s2t_kd_loss", "t2s_agreement", "t2s_acc"):
        assert metric in logged
    # exp(mixed loss) is no perplexity: gone where Axolotl lets a trainer say so (0.21+)
    assert ("ppl" in logged) == (not hasattr(AxolotlTrainer, "reports_token_perplexity"))


@pytest.mark.xdist_group("lora_run")  # one worker trains the shared run once
@pytest.mark.every_release
def test_merge_lora_keeps_the_projector_where_axolotl_has_the_hook(lora_run, tmp_path) -> None:
    """`axolotl merge-lora` on a DSKD run works; from 0.21 (`post_lora_merge`) the merged
    folder also gets the projector."""
    cfg, run_dir = lora_run
    merge_cfg = cfg | {"lora_model_dir": str(run_dir), "output_dir": str(tmp_path)}
    result = run_cli(["axolotl", "merge-lora"], merge_cfg, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    merged = tmp_path / "merged"
    assert (merged / "model.safetensors").is_file()
    if hasattr(BasePlugin, "post_lora_merge"):
        assert torch.equal(load_file(merged / PROJECTOR)["weight"], load_file(run_dir / PROJECTOR)["weight"])
    else:
        assert not (merged / PROJECTOR).exists()


@pytest.mark.xdist_group("lora_run")  # one worker trains the shared run once
def test_resume_from_middle_checkpoint_reproduces_the_projector(lora_run, tmp_path) -> None:
    cfg, run_dir = lora_run
    resumed_dir = tmp_path / "run"
    resumed_dir.mkdir()
    shutil.copytree(run_dir / "checkpoint-6", resumed_dir / "checkpoint-6")
    resumed_cfg = cfg | {"output_dir": str(resumed_dir), "resume_from_checkpoint": str(resumed_dir / "checkpoint-6")}
    train(AXOLOTL, resumed_cfg, tmp_path)
    uninterrupted = load_file(run_dir / PROJECTOR)["weight"]
    resumed = load_file(resumed_dir / PROJECTOR)["weight"]
    assert not torch.equal(load_file(run_dir / "checkpoint-6" / PROJECTOR)["weight"], uninterrupted)
    assert torch.allclose(resumed, uninterrupted, atol=1e-5)


def _cached(cfg: dict, workdir: Path) -> dict:
    """`cfg` trained from a float32 teacher cache built (by the command) in `workdir`."""
    cached_cfg = cfg | {
        "output_dir": str(workdir / "run"),
        "dskd_teacher_cache": str(workdir / "cache"),
        "dskd_teacher_cache_dtype": "float32",
    }
    built = run_cli(["axolotl-dskd", "cache-teacher"], cached_cfg, workdir)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-6000:]
    assert (workdir / "cache" / "manifest.json").is_file()
    return cached_cfg


def _logged(run_dir: Path) -> list[dict]:
    return [entry for entry in log_history(run_dir) if "loss" in entry]


ONE_ROW = {"micro_batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": 6, "save_steps": 3}


def test_cached_teacher_full_run_equals_the_live_run_and_resumes(tiny, tmp_path) -> None:
    """Built by `axolotl-dskd cache-teacher`, a float32 cache trains exactly the live run
    (one row per micro-batch: the teacher read each row in the same padded shape when the
    cache was built, so even the last bits agree) without loading the teacher's body; a
    resumed cached run ends where the uninterrupted one does. Full fine-tuning: Axolotl's
    LoRA init differs from run to run."""
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path / "live") | ONE_ROW
    live_dir = train(AXOLOTL, cfg, tmp_path / "live")
    cached_cfg = _cached(cfg, tmp_path / "cached")
    result = run_cli(AXOLOTL, cached_cfg, tmp_path / "cached")
    assert result.returncode == 0, result.stderr[-6000:]
    logs = result.stdout + result.stderr
    assert "training from the teacher cache" in logs
    assert "loading teacher" not in logs
    cached_dir = Path(cached_cfg["output_dir"])
    for got, expected in zip(_logged(cached_dir), _logged(live_dir), strict=True):
        for key in ("loss", "grad_norm", "kd_loss", "teacher_ce", "teacher_acc"):
            assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    uninterrupted = load_file(cached_dir / PROJECTOR)["weight"]
    assert torch.equal(uninterrupted, load_file(live_dir / PROJECTOR)["weight"])
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(cached_dir / "checkpoint-3", resumed_dir / "checkpoint-3")
    resumed_cfg = cached_cfg | {
        "output_dir": str(resumed_dir),
        "resume_from_checkpoint": str(resumed_dir / "checkpoint-3"),
    }
    train(AXOLOTL, resumed_cfg, tmp_path)
    assert torch.allclose(load_file(resumed_dir / PROJECTOR)["weight"], uninterrupted, atol=1e-5)
    stale = run_cli(AXOLOTL, cached_cfg | {"sequence_len": 256}, tmp_path / "stale")
    assert stale.returncode != 0
    assert "(sequence_len: the cache has 512, this run 256); rebuild it" in stale.stderr
    assert "Loading weights" not in stale.stdout + stale.stderr


def test_cached_teacher_cross_tokenizer_lora_run_reads_the_live_teachers_rows(tiny, tmp_path) -> None:
    """Across tokenizers, LoRA, with evaluation: every logged teacher metric (the teacher
    alone, on the batch's rows) equals the live run's, and so does the first loss (LoRA's
    B starts at zero, so Axolotl's run-to-run LoRA init only shows from the second step)."""
    cfg = lora(base_config(tiny.student, tiny.cross_teacher, tiny.data, tmp_path / "live")) | ONE_ROW
    cfg |= {"max_steps": 4, "save_steps": 4, "val_set_size": 0.1, "eval_steps": 4}
    live_dir = train(AXOLOTL, cfg, tmp_path / "live")
    cached_dir = train(AXOLOTL, _cached(cfg, tmp_path / "cached"), tmp_path / "cached")
    cached, live = _logged(cached_dir), _logged(live_dir)
    assert len(cached) == len(live) == 4
    for got, expected in zip(cached, live, strict=True):
        for key in ("teacher_ce", "teacher_acc", "align_ratio"):
            assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    assert cached[0]["loss"] == pytest.approx(live[0]["loss"], rel=1e-6)
    evals = [[entry for entry in log_history(run) if "eval_teacher_ce" in entry] for run in (cached_dir, live_dir)]
    assert len(evals[0]) == len(evals[1]) > 0
    for got, expected in zip(*evals, strict=True):
        assert got["eval_teacher_ce"] == pytest.approx(expected["eval_teacher_ce"], rel=1e-6)


@pytest.mark.every_release
def test_full_finetune_via_python_module_with_eval(tiny, tmp_path) -> None:
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path)
    cfg |= {"max_steps": 10, "save_steps": 10, "val_set_size": 0.1, "eval_steps": 5}
    run_dir = train(PYTHON_M, cfg, tmp_path)
    _assert_loss_falls(run_dir)
    history = json.loads((run_dir / "checkpoint-10" / "trainer_state.json").read_text())["log_history"]
    evals = [entry for entry in history if "eval_loss" in entry]
    assert len(evals) >= 2 and all("eval_s2t_kd_loss" in entry and "ce_loss" not in entry for entry in evals)
    _assert_projector_in_checkpoints(run_dir, 5e-4)
    saved = load_file(run_dir / "model.safetensors")
    assert not any("projector" in key for key in saved)  # the student checkpoint stays a plain model


@pytest.mark.every_release
def test_qlora_student_with_4bit_teacher_via_accelerate(tiny, tmp_path) -> None:
    cfg = lora(base_config(tiny.student, tiny.teacher, tiny.data, tmp_path))
    cfg |= {
        "adapter": "qlora",
        "load_in_4bit": True,
        "dskd_teacher_load_in_4bit": True,
        "learning_rate": 0.02,
        "max_steps": 4,
        "save_steps": 4,
    }
    run_dir = train(ACCELERATE, cfg, tmp_path)
    assert (run_dir / "adapter_model.safetensors").is_file()
    _assert_projector_in_checkpoints(run_dir, 5e-4)
    assert all(torch.isfinite(torch.tensor(_losses(run_dir))))


def test_short_alias_and_vanilla_kd_baseline(tiny, tmp_path) -> None:
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path)
    cfg |= {"plugins": ["dskd.DSKDPlugin"], "dskd_method": "vanilla_kd", "max_steps": 2, "save_steps": 2}
    run_dir = train(AXOLOTL, cfg, tmp_path)
    history = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert "kd_loss" in history[0] and "t2s_ce_loss" not in history[0]
    assert not (run_dir / PROJECTOR).exists()  # vanilla KD has no projector


def test_preprocess_still_works(tiny, tmp_path) -> None:
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path)
    result = run_cli(["axolotl", "preprocess"], cfg, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any((tmp_path / "prepared").iterdir())


@pytest.mark.every_release
def test_bad_config_fails_before_any_model_loads(tiny, tmp_path) -> None:
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path) | {"dskd_divergence": "kl"}
    result = run_cli(AXOLOTL, cfg, tmp_path)
    assert result.returncode != 0
    assert "dskd_divergence: 'kl' is not supported; use one of: forward_kl" in result.stderr
    assert "Loading weights" not in result.stderr + result.stdout


@pytest.mark.every_release
def test_cross_tokenizer_lora_run_learns_and_logs_alignment(tiny, tmp_path) -> None:
    cfg = lora(base_config(tiny.student, tiny.cross_teacher, tiny.data, tmp_path))
    cfg |= {"learning_rate": 0.02, "dskd_projector_lr": 0.01, "max_steps": 12, "save_steps": 12}
    run_dir = train(AXOLOTL, cfg, tmp_path)
    _assert_loss_falls(run_dir)
    _assert_projector_in_checkpoints(run_dir, 0.01)
    history = json.loads((run_dir / "checkpoint-12" / "trainer_state.json").read_text())["log_history"]
    ratios = [entry["align_ratio"] for entry in history if "align_ratio" in entry]
    assert len(ratios) == 12 and all(0.2 < ratio < 1.0 for ratio in ratios), ratios
    assert all("s2t_agreement" in entry for entry in history if "loss" in entry)


def test_cross_tokenizer_eta_strict_alignment_runs(tiny, tmp_path) -> None:
    cfg = base_config(tiny.student, tiny.cross_teacher, tiny.data, tmp_path)
    cfg |= {"dskd_alignment": "eta_strict", "max_steps": 2, "save_steps": 2}
    run_dir = train(PYTHON_M, cfg, tmp_path)
    history = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert all(0.0 < entry["align_ratio"] < 1.0 for entry in history if "loss" in entry)


def test_teacher_renders_conversations_with_its_own_chat_template(tiny, tmp_path) -> None:
    cfg = lora(base_config(tiny.student, tiny.cross_teacher, tiny.chat_data, tmp_path))
    cfg |= {
        "datasets": [
            {
                "path": str(tiny.chat_data),
                "type": "chat_template",
                "ds_type": "json",
                "field_messages": "messages",
                "chat_template": "tokenizer_default",
            }
        ],
        "dskd_teacher_chat_template": True,
        "max_steps": 3,
        "save_steps": 3,
    }
    run_dir = train(AXOLOTL, cfg, tmp_path)
    history = json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    assert all(0.2 < entry["align_ratio"] <= 1.0 for entry in history if "loss" in entry), history


@pytest.mark.every_release
@pytest.mark.parametrize("teacher", ["same_vocabulary", "cross_tokenizer"])
def test_on_policy_lora_run_samples_every_micro_batch(tiny, tmp_path, teacher: str) -> None:
    teacher_dir = tiny.teacher if teacher == "same_vocabulary" else tiny.cross_teacher
    cfg = lora(base_config(tiny.student, teacher_dir, tiny.data, tmp_path))
    cfg |= {
        "dskd_on_policy_ratio": 1.0,
        "dskd_on_policy_max_new_tokens": 12,
        "dskd_on_policy_temperature": 1.2,
        "gradient_accumulation_steps": 2,
        "max_steps": 3,
        "save_steps": 3,
    }
    run_dir = train(AXOLOTL, cfg, tmp_path)
    history = json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:
        assert entry["on_policy"] == 1.0 and entry["on_policy_gen_seconds"] > 0
        assert torch.isfinite(torch.tensor(entry["loss"])) and entry["kd_loss"] > 0
    if teacher == "cross_tokenizer":
        assert all(0.0 < entry["align_ratio"] <= 1.0 for entry in logged)


@pytest.mark.every_release
@pytest.mark.parametrize("teacher", ["same_vocabulary", "cross_tokenizer"])
def test_sample_packing_run_packs_rows_and_distils(tiny, tmp_path, teacher: str) -> None:
    """Same vocabulary: full fine-tune, padded to sequence_len, packed evaluation too.
    Different tokenizers: LoRA with on-policy micro-batches (prompts cut per packed row)."""
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path)
    cfg |= {"sample_packing": True, "sequence_len": 256, "num_epochs": 1, "save_steps": 100}
    cfg.pop("max_steps")
    if teacher == "same_vocabulary":
        cfg |= {"pad_to_sequence_len": True, "val_set_size": 0.25, "eval_sample_packing": True, "eval_steps": 2}
    else:
        cfg = lora(cfg) | {"dskd_teacher_model": str(tiny.cross_teacher), "dskd_on_policy_ratio": 0.5}
        cfg |= {"dskd_on_policy_max_new_tokens": 8}
    run_dir = train(AXOLOTL, cfg, tmp_path)
    history = log_history(run_dir)
    logged = [entry for entry in history if "loss" in entry]
    train_rows = sum(1 for _ in tiny.data.open()) * (0.75 if teacher == "same_vocabulary" else 1.0)
    unpacked_steps = train_rows // cfg["micro_batch_size"]
    assert 0 < len(logged) <= unpacked_steps / 2, (len(logged), unpacked_steps)  # several rows per sequence
    assert all(torch.isfinite(torch.tensor(entry["loss"])) and entry["kd_loss"] > 0 for entry in logged)
    assert all(0.0 <= entry["teacher_acc"] <= 1.0 for entry in logged)
    if teacher == "same_vocabulary":
        assert any("eval_loss" in entry and "eval_teacher_acc" in entry for entry in history)
    else:
        assert all(0.0 < entry["align_ratio"] <= 1.0 for entry in logged)
        assert any(entry["on_policy"] == 1.0 for entry in logged)


# `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's simple launcher);
# torchrun starts two, and ACCELERATE_USE_CPU makes accelerate join them with gloo.
ENGINE_ON_CPU = [
    "torchrun",
    "--standalone",
    "--nproc_per_node",
    "2",
    str(Path(__file__).with_name("cpu_engine_launch.py")),
]
DDP = ["env", "ACCELERATE_USE_CPU=1", *ENGINE_ON_CPU]
DEEPSPEED_AUTO = {
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
}
ZERO = {
    "deepspeed_zero2": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True},
    "deepspeed_zero3": {"stage": 3, "overlap_comm": False, "stage3_gather_16bit_weights_on_model_save": True},
}


FSDP2 = {
    "fsdp_version": 2,
    "fsdp_config": {
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
        "reshard_after_forward": True,
        # FULL_STATE_DICT checkpoints fail on CPU in Axolotl 0.19 even without the plugin
        "state_dict_type": "SHARDED_STATE_DICT",
    },
}


def _two_ranks(engine: str, workdir: Path) -> tuple[list[str], dict]:
    """The launcher and config keys that run `engine` on 2 CPU ranks. DeepSpeed and FSDP
    get one dataset process: a worker spawned by `datasets` would re-run the launcher script."""
    if engine == "ddp":
        return DDP, {}
    if engine == "fsdp2":
        return ["env", "ACCELERATE_USE_CPU=1", *ENGINE_ON_CPU], FSDP2 | {"dataset_num_proc": 1}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ds.json").write_text(json.dumps(DEEPSPEED_AUTO | {"zero_optimization": ZERO[engine]}))
    return ENGINE_ON_CPU, {"deepspeed": str(workdir / "ds.json"), "dataset_num_proc": 1}


@pytest.mark.parametrize("engine", ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp2"])
@pytest.mark.parametrize("teacher", ["same_vocabulary", "cross_tokenizer"])
def test_two_processes_match_one_process_with_twice_the_micro_batch(tiny, tmp_path, teacher: str, engine: str) -> None:
    """DDP, DeepSpeed ZeRO-2/3 and FSDP2 on CPU (gloo): the projector's gradients are
    averaged like the student's (by the plugin under DDP; by ZeRO and FSDP, which own it as
    part of the student), so 2 ranks x 1 row per step train exactly what 1 rank x 2 rows
    does, on the same rows. Under ZeRO-3 the teacher is partitioned too, the loss reads
    both heads and the projector gathered, and the same-vocabulary student ties its head to
    its embeddings like the default SmolLM2 pair (ZeRO-3 sums the tied weight's gradient
    from both uses): the final models match too. Full fine-tuning (the student head trains
    too): Axolotl's LoRA init is not reproducible from run to run."""
    teacher_dir = tiny.teacher if teacher == "same_vocabulary" else tiny.cross_teacher
    student = tiny.student
    if engine == "deepspeed_zero3" and teacher == "same_vocabulary":
        student = _tied_copy(tiny.student, tmp_path / "tied_student")
    one_dir, two_dir, two_log = _one_and_two_ranks(
        engine, base_config(student, teacher_dir, tiny.data, tmp_path), tmp_path
    )
    if engine in ("ddp", "deepspeed_zero2"):  # FSDP and ZeRO-3 hold one split projector: nothing to compare
        assert "dskd: t2s projector identical on 2 ranks" in two_log
    if engine in ZERO:  # DeepSpeed really ran (ZeRO's checkpoint layout); the model has no projector
        assert (two_dir / "checkpoint-4" / "global_step4").is_dir()
        assert not [key for key in load_file(two_dir / "model.safetensors") if "dskd" in key]
    if engine == "deepspeed_zero3":  # each rank saved its own partition; the teacher was partitioned
        assert (two_dir / "checkpoint-4" / "global_step4" / "zero_pp_rank_1_mp_rank_00_model_states.pt").is_file()
        assert two_log.count("dskd: teacher partitioned by a ZeRO-3 inference engine") == 2
        one_model, two_model = load_file(one_dir / "model.safetensors"), load_file(two_dir / "model.safetensors")
        assert sorted(one_model) == sorted(two_model)
        assert all(torch.allclose(one_model[key], two_model[key], atol=1e-4, rtol=0) for key in one_model)
    if engine == "fsdp2":  # FSDP really ran (its sharded checkpoint layout)
        assert (two_dir / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()
    _assert_same_training(one_dir, two_dir)


def _one_and_two_ranks(engine: str, cfg: dict, tmp_path: Path) -> tuple[Path, Path, str]:
    """`cfg` trained 4 steps by 1 process x 2 rows and by `engine` on 2 ranks x 1 row:
    (one's output dir, two's output dir, two's log)."""
    runs = {}
    for name, micro_batch_size in (("one", 2), ("two", 1)):
        workdir = tmp_path / name
        launcher, engine_keys = _two_ranks(engine, workdir) if name == "two" else (ACCELERATE, {})
        run_cfg = cfg | {
            "dataset_prepared_path": str(workdir / "prepared"),
            "output_dir": str(workdir / "run"),
            "micro_batch_size": micro_batch_size,
            "curriculum_sampling": True,  # the same row order whatever the number of ranks
            "learning_rate": 0.01,
            "dskd_projector_lr": 0.01,
            "max_grad_norm": 1.0,
            "max_steps": 4,
            "save_steps": 4,
            "max_memory": {"cpu": "8GiB"},  # lets Axolotl place each rank's model on the CPU
        }
        result = run_cli(launcher, run_cfg | engine_keys, workdir)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        runs[name] = Path(run_cfg["output_dir"]), result.stdout + result.stderr
    return runs["one"][0], runs["two"][0], runs["two"][1]


def _assert_same_training(one_dir: Path, two_dir: Path) -> None:
    one_projector, two_projector = load_file(one_dir / PROJECTOR)["weight"], load_file(two_dir / PROJECTOR)["weight"]
    assert torch.allclose(one_projector, two_projector, atol=1e-4, rtol=0)
    assert _losses(one_dir) == pytest.approx(_losses(two_dir), abs=1e-4)
    assert len(_losses(two_dir)) == 4


@pytest.mark.parametrize("engine", ["ddp", "deepspeed_zero2"])
def test_two_processes_from_a_teacher_cache_match_one_process(tiny, tmp_path, engine: str) -> None:
    """Each rank's collator reads its own rows from the shared cache: 2 ranks x 1 row train
    what 1 rank x 2 rows does, without any teacher body loaded."""
    cfg = _cached(base_config(tiny.student, tiny.teacher, tiny.data, tmp_path), tmp_path)
    one_dir, two_dir, two_log = _one_and_two_ranks(engine, cfg, tmp_path)
    assert two_log.count("training from the teacher cache") == 2
    assert "loading teacher" not in two_log
    assert "dskd: t2s projector identical on 2 ranks" in two_log
    _assert_same_training(one_dir, two_dir)


def _tied_copy(student_dir: Path, out: Path) -> Path:
    """The student with its output head tied to its input embeddings."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(out)
    for path in student_dir.iterdir():
        if path.suffix in (".jinja", ".json") and not (out / path.name).exists():
            shutil.copy(path, out / path.name)
    return out


@pytest.mark.parametrize("engine", ["fsdp2", "deepspeed_zero3"])
def test_split_projector_resumes_from_middle_checkpoint(tiny, tmp_path, engine: str) -> None:
    """Under FSDP2 and ZeRO-3 each rank holds a slice of the projector: the checkpoint's
    projector file holds it whole (gathered from both ranks), and a resume hands each rank
    its slice back (FSDP2: from that file; ZeRO-3: from DeepSpeed's own checkpoint)."""
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path / "full")
    launcher, engine_keys = _two_ranks(engine, tmp_path)
    cfg |= engine_keys | {"max_memory": {"cpu": "8GiB"}, "micro_batch_size": 1}
    cfg |= {"max_steps": 4, "save_steps": 2, "learning_rate": 0.01, "dskd_projector_lr": 0.01}
    run_dir = train(launcher, cfg, tmp_path / "full")
    resumed_dir = tmp_path / "resumed" / "run"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(run_dir / "checkpoint-2", resumed_dir / "checkpoint-2")
    resumed_cfg = cfg | {"output_dir": str(resumed_dir), "resume_from_checkpoint": str(resumed_dir / "checkpoint-2")}
    train(launcher, resumed_cfg, tmp_path / "resumed")
    uninterrupted = load_file(run_dir / PROJECTOR)["weight"]
    assert not torch.equal(load_file(run_dir / "checkpoint-2" / PROJECTOR)["weight"], uninterrupted)
    assert torch.allclose(load_file(resumed_dir / PROJECTOR)["weight"], uninterrupted, atol=1e-5)
    assert _losses(resumed_dir)[-2:] == pytest.approx(_losses(run_dir)[-2:], abs=1e-5)
