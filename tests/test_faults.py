"""The fault suite: stale, corrupted and truncated teacher caches, rebuilds, misspelled keys,
checkpoints missing their projector, unwritable folders. Each test asserts the outcome
(equal numbers, or the exact one-line error), not only that something failed. The kill -9
and zero-response runs drive the real CLI (tests/e2e/test_faults_e2e.py)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from axolotl_dskd.commands.cache_teacher import unwritable, verify, write_cache
from axolotl_dskd.distill.vocabulary import SharedVocabulary
from axolotl_dskd.errors import DSKDConfigError
from axolotl_dskd.integration.args import DSKDTrainingArgsMixin
from axolotl_dskd.integration.plugin_entry import missing_plugin_entry
from axolotl_dskd.integration.resume import PROJECTOR_FILE, choose_checkpoint
from axolotl_dskd.teacher.cache import TeacherCache, TeacherCacheError, row_key, weights_identity
from tests.integration.test_args import _error
from tests.teacher.test_cache import _collator, _features
from tests.tiny import base_config, refused, run_cli

pytestmark = pytest.mark.faults

SHARDS = ("train-00000-of-00002.safetensors", "train-00001-of-00002.safetensors")


def _teacher(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)


def _build(tiny, teacher_dir: Path, features: list[dict], out: Path, dtype: str = "float32") -> None:
    """What `axolotl-dskd cache-teacher` writes: settings name the teacher's weights."""
    options = argparse.Namespace(shard_rows=3, batch_size=2, dtype=dtype)
    settings = {"dskd_teacher_model": "teacher", "teacher_weights": weights_identity(str(teacher_dir))}
    dataset = {"train": Dataset.from_list(features)}
    write_cache(
        out,
        _teacher(teacher_dir),
        _collator(tiny, False),
        dataset,
        options,
        settings,
        SharedVocabulary(len(tiny.tokenizer)),
    )


def _rows(cache_dir: Path, features: list[dict]) -> torch.Tensor:
    return TeacherCache(cache_dir).rows([row_key(f["input_ids"], f["labels"]) for f in features])


def _mtimes(cache_dir: Path) -> list[int]:
    return [(cache_dir / name).stat().st_mtime_ns for name in SHARDS]


def test_rebuild_with_another_teacher_rewrites_every_shard(tiny, tmp_path, caplog) -> None:
    """Issue 27 (1): a rerun into the same folder used to keep the old teacher's shards."""
    features = _features(tiny.tokenizer, tiny.data, rows=5)
    _build(tiny, tiny.teacher, features, tmp_path / "cache")
    _build(tiny, tiny.student, features, tmp_path / "clean")  # the student stands in as another teacher
    with caplog.at_level(logging.WARNING):
        _build(tiny, tiny.student, features, tmp_path / "cache")
    rebuilt, clean = _rows(tmp_path / "cache", features), _rows(tmp_path / "clean", features)
    assert all(torch.equal(rebuilt[name], clean[name]) for name in clean)
    for name in SHARDS:
        assert f"cache-teacher: rewriting {name}: built with another teacher, adapter, dtype or settings" in caplog.text


def test_rebuild_with_another_dtype_rewrites_every_shard(tiny, tmp_path) -> None:
    features = _features(tiny.tokenizer, tiny.data, rows=5)
    _build(tiny, tiny.teacher, features, tmp_path / "cache", dtype="float32")
    _build(tiny, tiny.teacher, features, tmp_path / "cache", dtype="bfloat16")
    rows = _rows(tmp_path / "cache", features)
    assert rows["teacher_cached_rows"].dtype == torch.bfloat16


def test_edited_data_rebuilds_exactly_the_changed_shard(tiny, tmp_path, caplog) -> None:
    features = _features(tiny.tokenizer, tiny.data, rows=6)
    _build(tiny, tiny.teacher, features, tmp_path / "cache")
    before = _mtimes(tmp_path / "cache")
    edited = [*features[:4], _features(tiny.tokenizer, tiny.data, rows=8)[7], features[5]]  # row 4: shard 1
    with caplog.at_level(logging.WARNING):
        _build(tiny, tiny.teacher, edited, tmp_path / "cache")
    after = _mtimes(tmp_path / "cache")
    assert after[0] == before[0] and after[1] != before[1]
    assert f"cache-teacher: rewriting {SHARDS[1]}: the dataset's rows for it changed" in caplog.text
    _build(tiny, tiny.teacher, edited, tmp_path / "clean")
    rebuilt, clean = _rows(tmp_path / "cache", edited), _rows(tmp_path / "clean", edited)
    assert all(torch.equal(rebuilt[name], clean[name]) for name in clean)


def _flip_last_bytes(path: Path) -> None:
    """Flip bytes in the data section (the end of a safetensors file), as a bad disk would."""
    data = bytearray(path.read_bytes())
    for offset in range(1, 9):
        data[-offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_shard_stops_training_naming_the_file_and_a_rerun_rewrites_only_it(tiny, tmp_path, capsys) -> None:
    """Issue 27 (4): flipped bytes used to train one step at loss 3e22 and exit 0."""
    features = _features(tiny.tokenizer, tiny.data, rows=5)
    cache = tmp_path / "cache"
    _build(tiny, tiny.teacher, features, cache)
    clean = _rows(cache, features)
    kept = _mtimes(cache)[0]
    _flip_last_bytes(cache / SHARDS[1])
    with pytest.raises(TeacherCacheError) as caught:
        _rows(cache, features)
    assert str(caught.value) == (
        f"dskd_teacher_cache: {cache / SHARDS[1]} is corrupted (its contents differ from the digest written when "
        "it was built); rerun `axolotl-dskd cache-teacher cfg.yml`, which rewrites only the damaged shards"
    )
    assert verify(cache) == 1
    assert f"{cache / SHARDS[1]} is corrupted" in capsys.readouterr().out
    _build(tiny, tiny.teacher, features, cache)
    assert _mtimes(cache)[0] == kept and verify(cache) == 0
    rebuilt = _rows(cache, features)
    assert all(torch.equal(rebuilt[name], clean[name]) for name in clean)


def test_truncated_shard_is_refused_before_any_model_loads(tiny, tmp_path) -> None:
    """Issue 27 (4): a truncated shard used to fail after the models loaded, without its name."""
    from axolotl_dskd.teacher.identity import teacher_cache_settings
    from tests.integration.test_args import _validate

    cache = tmp_path / "cache"
    options = argparse.Namespace(shard_rows=3, batch_size=2, dtype="float32")
    settings = teacher_cache_settings(_validate(tiny, tmp_path))
    features = {"train": Dataset.from_list(_features(tiny.tokenizer, tiny.data, rows=5))}
    write_cache(
        cache,
        _teacher(tiny.teacher),
        _collator(tiny, False),
        features,
        options,
        settings,
        SharedVocabulary(len(tiny.tokenizer)),
    )
    assert _validate(tiny, tmp_path, dskd_teacher_cache=str(cache)).dskd_teacher_cache == str(cache)
    shard = cache / SHARDS[0]
    shard.write_bytes(shard.read_bytes()[:40])
    error = _error(tiny, tmp_path, dskd_teacher_cache=str(cache))
    assert f"dskd_teacher_cache: {shard} is unreadable (" in error
    assert "which rewrites only the shards that are damaged" in error


def test_teacher_retrained_into_the_same_folder_is_detected(tiny, tmp_path) -> None:
    """Issue 27 (1): the manifest named the teacher's path only, so new weights in the same
    folder went unnoticed."""
    import shutil

    teacher_dir = tmp_path / "teacher"
    shutil.copytree(tiny.teacher, teacher_dir)
    before = weights_identity(str(teacher_dir))
    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.01)  # same names, shapes and file size, new values
    model.save_pretrained(teacher_dir)
    assert weights_identity(str(teacher_dir)) != before
    assert weights_identity("some/hub-id") is None


def test_misspelled_key_is_refused_with_the_closest_known_key(tiny, tmp_path) -> None:
    """Issue 27 (3): `dskd_temprature: 4` used to train at the default 2.0."""
    error = _error(tiny, tmp_path, dskd_temprature=4.0)
    assert "dskd_temprature: not a key of the DSKD plugin; did you mean dskd_temperature?" in error


def _checkpoint(run_dir: Path, step: int, projector: str | None) -> Path:
    """A checkpoint folder as HF + the plugin leave it; `projector`: ok | missing | damaged."""
    checkpoint = run_dir / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    if projector != "missing":
        save_file({"weight": torch.ones(2, 2)}, str(checkpoint / PROJECTOR_FILE))
    if projector == "damaged":
        path = checkpoint / PROJECTOR_FILE
        path.write_bytes(path.read_bytes()[:-8])
    return checkpoint


@pytest.mark.parametrize("newest", ["missing", "damaged"])
def test_auto_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, caplog, newest: str) -> None:
    """Issue 27 (6): a checkpoint without its projector used to stop the resume after the
    models loaded, with a FileNotFoundError."""
    complete = _checkpoint(tmp_path, 4, "ok")
    incomplete = _checkpoint(tmp_path, 8, newest)
    cfg = {"output_dir": str(tmp_path), "auto_resume_from_checkpoints": True, "dskd_method": "dskd"}
    with caplog.at_level(logging.WARNING):
        choose_checkpoint(cfg)
    assert cfg["resume_from_checkpoint"] == str(complete)
    assert f"dskd: {incomplete} has " in caplog.text and f"resuming from {complete} instead" in caplog.text


def test_explicit_resume_from_an_incomplete_checkpoint_stops_with_one_line(tmp_path) -> None:
    incomplete = _checkpoint(tmp_path, 8, "missing")
    with pytest.raises(DSKDConfigError) as caught:
        choose_checkpoint({"resume_from_checkpoint": str(incomplete), "dskd_method": "dskd"})
    assert str(caught.value) == (
        f"resume_from_checkpoint: {incomplete} has no {PROJECTOR_FILE}, so the DSKD run cannot be restored from it "
        "(a run killed while saving leaves such a checkpoint); point it at an earlier checkpoint"
    )
    only = {"output_dir": str(tmp_path), "auto_resume_from_checkpoints": True, "dskd_method": "dskd"}
    with pytest.raises(DSKDConfigError, match="no checkpoint in .* is complete"):
        choose_checkpoint(only)
    vanilla = {"resume_from_checkpoint": str(incomplete), "dskd_method": "vanilla_kd"}
    choose_checkpoint(vanilla)  # vanilla KD has no projector: nothing missing
    assert vanilla["resume_from_checkpoint"] == str(incomplete)


def test_unwritable_cache_folder_is_found_before_any_work(tmp_path) -> None:
    """Issue 27 (6): `cache-teacher --out` a read-only folder failed only after a whole shard."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert unwritable(blocker / "cache") == "Not a directory"
    assert unwritable(tmp_path / "cache") is None and not os.listdir(tmp_path / "cache")


@pytest.mark.parametrize("command", ["plan", "teacher-fit", "cache-teacher"])
def test_dskd_keys_without_the_plugin_entry_are_refused_by_the_commands(tiny, tmp_path, command: str) -> None:
    """Axolotl would train such a YAML as plain SFT with exit 0; our commands say so."""
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path) | {"dskd_kd_ratio": 0.7}
    cfg.pop("plugins")
    result = run_cli(["axolotl-dskd", command], cfg, tmp_path)
    assert result.returncode == 2
    assert (
        f"{command}: {tmp_path / 'cfg.yml'}: it sets dskd_kd_ratio, dskd_teacher_model but its `plugins:` has no "
        "axolotl_dskd.DSKDPlugin entry, so `axolotl train` would run plain SFT and ignore every dskd_ key; add "
        "`plugins: [axolotl_dskd.DSKDPlugin]`"
    ) in result.stdout


@pytest.mark.parametrize("entry", ["axolotl_dskd.DSKDPlugin", "dskd.DSKDPlugin", "dskd:DSKDPlugin"])
def test_every_spelling_of_the_plugin_entry_counts(entry: str) -> None:
    assert missing_plugin_entry({"dskd_teacher_model": "t", "plugins": [entry]}) is None
    assert missing_plugin_entry({"base_model": "s"}) is None  # no dskd_ keys: not ours to judge


def test_a_missing_teacher_folder_is_named_as_one(tiny, tmp_path) -> None:
    missing = tmp_path / "no-such-teacher"
    result = run_cli(["axolotl", "train"], base_config(tiny.student, missing, tiny.data, tmp_path), tmp_path)
    assert result.returncode != 0
    assert f"dskd_teacher_model: '{missing}' is not a directory, and not a hub id (org/name); check the path" in (
        result.stderr
    )
    assert "Repo id must be" not in result.stderr and "Loading weights" not in result.stderr


def test_a_hub_id_offline_says_it_cannot_be_reached(tiny, tmp_path) -> None:
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path) | {"dskd_teacher_tokenizer": "no-org/no-model"}
    assert (
        "dskd_teacher_tokenizer: 'no-org/no-model' is not a local directory, and the hub id cannot be reached "
        "offline (HF_HUB_OFFLINE=1); download it first or give a local folder"
    ) in refused(["axolotl", "train"], cfg, tmp_path)


def test_a_plugin_that_replaces_the_logits_path_is_named_as_the_user_wrote_it(tiny, tmp_path) -> None:
    entry = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
    cfg = base_config(tiny.student, tiny.teacher, tiny.data, tmp_path) | {"bf16": True}
    cfg["plugins"] = [entry, "axolotl_dskd.DSKDPlugin"]
    stderr = refused(["axolotl", "train"], cfg, tmp_path)
    assert (
        f"plugins: {entry} (it sets cut_cross_entropy) is not supported with axolotl_dskd.DSKDPlugin, because it "
        "patches away the logits path DSKD decodes from; remove that entry"
    ) in stderr


def test_auto_resume_into_a_checkpoint_of_another_teacher_stops_and_an_old_checkpoint_warns(tiny, tmp_path, caplog):
    from axolotl.utils.dict import DictDefault

    from axolotl_dskd.integration.run_record import run_record, write_record

    settings = DSKDTrainingArgsMixin(dskd_teacher_model=str(tiny.teacher), dskd_cross_tokenizer=False)
    old = _checkpoint(tmp_path, 2, "ok")
    cfg = DictDefault(vars(settings) | {"output_dir": str(tmp_path), "auto_resume_from_checkpoints": True})
    with caplog.at_level(logging.WARNING):
        choose_checkpoint(cfg)
    assert f"dskd: {old} has no dskd_run.json (written before axolotl-dskd recorded" in caplog.text
    newest = _checkpoint(tmp_path, 4, "ok")
    write_record(str(newest), run_record(settings) | {"dskd_method": "vanilla_kd"})
    with pytest.raises(DSKDConfigError) as caught:
        choose_checkpoint(cfg)
    assert str(caught.value).startswith(
        f"auto_resume_from_checkpoints: {newest} was trained with another setup (dskd_method: 'vanilla_kd' in the "
        "checkpoint, 'dskd' in this run)"
    )
    write_record(str(newest), run_record(settings))
    choose_checkpoint(cfg)  # the same setup: resumes


def test_cache_teacher_checks_free_space_against_the_caches_size_before_the_teacher_pass(tmp_path) -> None:
    from axolotl_dskd.commands.cache_teacher import cache_bytes, too_little_space

    rows = Dataset.from_dict({"labels": [[-100, -100, 5, 6], [7, 8, -100]]})  # 2 + 1 trained labels
    needed = cache_bytes({"train": rows, "eval": None}, teacher_hidden=1024, dtype=torch.bfloat16)
    assert needed == 3 * 1024 * 2
    assert too_little_space(tmp_path, needed) is None
    problem = too_little_space(tmp_path, 1 << 60)
    assert problem.startswith(f"the cache needs up to {(1 << 60) / 2**30:.2f} GiB and {tmp_path} has ")
    assert problem.endswith("GiB free; free some space or pick another --out")


def test_a_second_run_into_the_folder_a_live_run_holds_is_refused(tmp_path) -> None:
    from axolotl_dskd.integration.run_lock import hold_output_dir

    held = hold_output_dir(str(tmp_path / "run"))
    with pytest.raises(DSKDConfigError) as caught:
        hold_output_dir(str(tmp_path / "run"))
    assert str(caught.value) == (
        f"output_dir: {tmp_path / 'run'} is in use by a live run (pid {os.getpid()}); two runs writing one folder "
        "overwrite each other's checkpoints. Wait for it or stop it (kill its process group), or pick another "
        "output_dir"
    )
    held.close()  # the run ended: the folder is free again
    hold_output_dir(str(tmp_path / "run")).close()
