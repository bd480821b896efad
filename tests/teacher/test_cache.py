"""The teacher cache: a cached run computes the live run's loss and gradients; a cache that
does not fit the run is refused with one line naming why."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from axolotl_dskd.collate.cross_tokenizer import DSKDCrossTokenizerCollator
from axolotl_dskd.collate.rows import DSKDRowCollator
from axolotl_dskd.commands.cache_teacher import write_cache
from axolotl_dskd.distill.step import DistillationStep
from axolotl_dskd.distill.vocabulary import CrossVocabulary, SharedVocabulary, Vocabulary
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.teacher.cache import (
    CACHED_COUNTS,
    HeadOnlyTeacher,
    Manifest,
    TeacherCache,
    TeacherCacheError,
    dataset_keys,
    row_key,
)
from axolotl_dskd.teacher.loading import output_head
from axolotl_dskd.teacher.source import CachedTeacher, LiveTeacher
from axolotl_dskd.tokens.vocab import load_tokenizer
from tests.integration.test_args import _error

CROSS = ("same_vocabulary", "cross_tokenizer")


def _features(tokenizer, data, rows: int) -> list[dict[str, list[int]]]:
    """Unpadded student rows of different lengths, as Axolotl's prepared dataset holds
    them (prompt masked)."""
    features = []
    for index, line in enumerate(data.read_text().splitlines()[:rows]):
        row = json.loads(line)
        prompt = tokenizer(row["instruction"] + "\n", add_special_tokens=False)["input_ids"][: 40 - 3 * index]
        response = tokenizer(row["output"], add_special_tokens=False)["input_ids"][: 30 - 4 * index]
        response.append(tokenizer.eos_token_id)
        ids = prompt + response
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + response})
    return features


def _collator(tiny, cross: bool, cache: str = "") -> DSKDRowCollator:
    if cross:
        return DSKDCrossTokenizerCollator(
            tiny.tokenizer,
            padding=True,
            return_tensors="pt",
            teacher_tokenizer_path=str(tiny.cross_teacher),
            teacher_cache=cache,
        )
    return DSKDRowCollator(tiny.tokenizer, padding=True, return_tensors="pt", teacher_cache=cache)


def _vocabulary(tiny, cross: bool) -> Vocabulary:
    if cross:
        return CrossVocabulary(tiny.tokenizer, load_tokenizer(str(tiny.cross_teacher)))
    return SharedVocabulary(len(tiny.tokenizer))


def _build(tiny, teacher, features, out, cross: bool, dtype: str = "float32") -> None:
    """What `axolotl-dskd cache-teacher` writes, for `features` (two shards, two rows per
    teacher forward: another batching than training's)."""
    options = argparse.Namespace(shard_rows=3, batch_size=2, dtype=dtype)
    write_cache(
        out,
        teacher,
        _collator(tiny, cross),
        {"train": Dataset.from_list(features)},
        options,
        {},
        _vocabulary(tiny, cross),
    )


def _step(tiny, student, teacher, cross: bool, method: str = "dskd", cached: bool = False) -> DistillationStep:
    """`cached`: the teacher is its head alone and its rows come with the batch."""
    loss_cfg = LossConfig(method=method, kd_ratio=0.5)
    source = CachedTeacher() if cached else LiveTeacher()
    return DistillationStep(student, teacher, loss_cfg, _vocabulary(tiny, cross), source=source)


def _loss_and_grads(step: DistillationStep, student, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    student.zero_grad(set_to_none=True)
    step.zero_grad(set_to_none=True)
    loss, _ = step(student, batch)
    loss.backward()
    params = [*student.parameters(), *step.parameters()]
    return loss.detach(), [p.grad.clone() for p in params if p.grad is not None]


def _teacher_dir(tiny, cross: bool):
    return tiny.cross_teacher if cross else tiny.teacher


@pytest.mark.parametrize("teacher_kind", CROSS)
def test_float32_cache_gives_the_live_teachers_loss_and_gradients(tiny, tmp_path, teacher_kind: str) -> None:
    cross = teacher_kind == "cross_tokenizer"
    teacher = AutoModelForCausalLM.from_pretrained(_teacher_dir(tiny, cross), dtype=torch.float32).eval()
    teacher.requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(tiny.student, dtype=torch.float32)
    features = _features(tiny.tokenizer, tiny.data, rows=5)
    _build(tiny, teacher, features, tmp_path, cross)
    live_loss, live_grads = _loss_and_grads(
        _step(tiny, student, teacher, cross), student, _collator(tiny, cross)(features)
    )
    cache = TeacherCache(tmp_path)
    cached_step = _step(tiny, student, HeadOnlyTeacher(cache.head()), cross, cached=True)
    cached_batch = _collator(tiny, cross, str(tmp_path))(features)
    cached_loss, cached_grads = _loss_and_grads(cached_step, student, cached_batch)
    assert sorted(path.name for path in tmp_path.glob("train-*")) == [
        "train-00000-of-00002.safetensors",
        "train-00001-of-00002.safetensors",
    ]
    assert torch.allclose(cached_loss, live_loss, atol=1e-6, rtol=0), (cached_loss, live_loss)
    assert len(cached_grads) == len(live_grads) > 0
    for cached, live in zip(cached_grads, live_grads, strict=True):
        assert torch.allclose(cached, live, atol=1e-6, rtol=1e-5)


def test_bfloat16_cache_stays_close_and_is_half_the_size(tiny, tmp_path) -> None:
    teacher = AutoModelForCausalLM.from_pretrained(tiny.teacher, dtype=torch.float32).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(tiny.student, dtype=torch.float32)
    features = _features(tiny.tokenizer, tiny.data, rows=4)
    sizes = {}
    losses = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        out.mkdir()
        _build(tiny, teacher, features, out, cross=False, dtype=dtype)
        sizes[dtype] = sum(path.stat().st_size for path in out.glob("train-*"))
        step = _step(tiny, student, HeadOnlyTeacher(TeacherCache(out).head()), cross=False, cached=True)
        losses[dtype] = step(student, _collator(tiny, False, str(out))(features))[0].item()
    assert sizes["bfloat16"] < 0.6 * sizes["float32"]
    assert losses["bfloat16"] != losses["float32"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=1e-2)


def test_a_row_missing_from_the_cache_is_an_error(tiny, tmp_path) -> None:
    teacher = AutoModelForCausalLM.from_pretrained(tiny.teacher, dtype=torch.float32).eval().requires_grad_(False)
    features = _features(tiny.tokenizer, tiny.data, rows=4)
    _build(tiny, teacher, features[:3], tmp_path, cross=False)
    missing = row_key(features[3]["input_ids"], features[3]["labels"])
    with pytest.raises(TeacherCacheError, match=f"row 1 of this batch \\(key {missing}\\) is not in"):
        _collator(tiny, False, str(tmp_path))(features[2:])


def test_rows_paired_otherwise_than_cached_are_an_error(tiny, tmp_path) -> None:
    """A same-vocabulary cache read by a cross-tokenizer run holds the wrong rows per row."""
    teacher = AutoModelForCausalLM.from_pretrained(tiny.teacher, dtype=torch.float32).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(tiny.student, dtype=torch.float32)
    features = _features(tiny.tokenizer, tiny.data, rows=2)
    _build(tiny, teacher, features, tmp_path, cross=False)
    cross_teacher = AutoModelForCausalLM.from_pretrained(tiny.cross_teacher, dtype=torch.float32)
    step = _step(tiny, student, HeadOnlyTeacher(output_head(cross_teacher).detach()), cross=True, cached=True)
    batch = _collator(tiny, True, str(tmp_path))(features)
    assert batch[CACHED_COUNTS].tolist() == [len([x for x in f["labels"][1:] if x != -100]) for f in features]
    with pytest.raises(TeacherCacheError, match="it was built with other alignment settings: rebuild it"):
        step(student, batch)


def test_incomplete_and_stale_caches_are_refused(tiny, tmp_path) -> None:
    teacher = AutoModelForCausalLM.from_pretrained(tiny.teacher, dtype=torch.float32).eval().requires_grad_(False)
    features = _features(tiny.tokenizer, tiny.data, rows=5)
    _build(tiny, teacher, features, tmp_path, cross=False)
    cache = TeacherCache(tmp_path)
    cache.check_split("train", dataset_keys(Dataset.from_list(features)))
    with pytest.raises(TeacherCacheError, match="was built from other train rows"):
        cache.check_split("train", dataset_keys(Dataset.from_list(features[:4])))
    with pytest.raises(TeacherCacheError, match="holds no eval rows"):
        cache.check_split("eval", [])
    (tmp_path / "train-00001-of-00002.safetensors").unlink()
    with pytest.raises(TeacherCacheError, match=r"is incomplete \(train-00001-of-00002.safetensors is missing\)"):
        TeacherCache(tmp_path)


def _manifest_for(tiny, tmp_path, **changes) -> str:
    """A cache folder whose manifest records the settings of the test config, changed."""
    from axolotl_dskd.teacher.identity import teacher_cache_settings
    from tests.integration.test_args import _validate

    settings = teacher_cache_settings(_validate(tiny, tmp_path)) | changes
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    Manifest(settings, "bfloat16", 64, "float32").write(cache)
    return str(cache)


def test_cache_built_for_this_config_passes_validation(tiny, tmp_path) -> None:
    from tests.integration.test_args import _validate

    cache = _manifest_for(tiny, tmp_path)
    assert _validate(tiny, tmp_path, dskd_teacher_cache=cache).dskd_teacher_cache == cache


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sequence_len": 1024}, "(sequence_len: the cache has 1024, this run 512)"),
        ({"dskd_teacher_load_in_4bit": True}, "(dskd_teacher_load_in_4bit: the cache has True, this run False)"),
        ({"dskd_teacher_model": "other/teacher"}, "(dskd_teacher_model: the cache has 'other/teacher', this run '"),
    ],
)
def test_cache_built_for_another_run_is_rejected_naming_what_differs(tiny, tmp_path, changes, message) -> None:
    cache = _manifest_for(tiny, tmp_path, **changes)
    error = _error(tiny, tmp_path, dskd_teacher_cache=cache)
    assert f"dskd_teacher_cache: {cache} was built for another run {message}" in error
    assert "rebuild it with `axolotl-dskd cache-teacher cfg.yml`" in error


def test_cache_settings_that_cannot_work_are_rejected(tiny, tmp_path) -> None:
    assert f"dskd_teacher_cache: {tmp_path} has no manifest.json; build it with" in _error(
        tiny, tmp_path, dskd_teacher_cache=str(tmp_path)
    )
    cache = _manifest_for(tiny, tmp_path)
    assert "dskd_teacher_cache: on-policy distillation (dskd_on_policy_ratio: 0.5) scores" in _error(
        tiny, tmp_path, dskd_teacher_cache=cache, dskd_on_policy_ratio=0.5
    )
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert "ZeRO-3 and FSDP2 are not supported with it yet" in _error(
        tiny, tmp_path, dskd_teacher_cache=cache, deepspeed=str(zero3)
    )
    assert "dskd_teacher_cache_dtype: 'int4' is not supported; use one of: bfloat16, float16, float32" in _error(
        tiny, tmp_path, dskd_teacher_cache_dtype="int4"
    )


def test_a_rerun_writes_only_missing_shards_and_ranks_split_them(tiny, tmp_path, monkeypatch) -> None:
    teacher = AutoModelForCausalLM.from_pretrained(tiny.teacher, dtype=torch.float32).eval().requires_grad_(False)
    features = _features(tiny.tokenizer, tiny.data, rows=5)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # two processes' shares of one build
    _build(tiny, teacher, features, tmp_path / "ranks", cross=False)
    assert [path.name for path in (tmp_path / "ranks").iterdir()] == ["train-00001-of-00002.safetensors"]
    monkeypatch.setenv("RANK", "0")  # rank 0 also writes the head and the manifest
    _build(tiny, teacher, features, tmp_path / "ranks", cross=False)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    _build(tiny, teacher, features, tmp_path / "one", cross=False)
    keys = [row_key(f["input_ids"], f["labels"]) for f in features]
    by_ranks, alone = TeacherCache(tmp_path / "ranks").rows(keys), TeacherCache(tmp_path / "one").rows(keys)
    assert all(torch.equal(by_ranks[name], alone[name]) for name in alone)
    first, second = (
        tmp_path / "one" / "train-00000-of-00002.safetensors",
        tmp_path / "one" / "train-00001-of-00002.safetensors",
    )
    second.unlink()
    kept = first.stat().st_mtime_ns
    _build(tiny, teacher, features, tmp_path / "one", cross=False)
    assert second.is_file() and first.stat().st_mtime_ns == kept
