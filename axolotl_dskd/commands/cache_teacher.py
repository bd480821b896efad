"""`axolotl-dskd cache-teacher cfg.yml`: run the teacher once over the prepared rows and
store what the loss reads of it (see `distill.teacher_cache`).

The rows are Axolotl's prepared dataset for the config, collated by the collator training
uses (so with different tokenizers the teacher sees the same re-tokenization and the cache
holds exactly the aligned rows). Shards are written whole, one at a time, each stamped
with its build (settings and teacher weights), its rows and a digest of its contents; a
rerun keeps the shards whose stamp matches and whose contents check out, rewrites the
others (saying which and why) and deletes shards of an older layout. Several processes
(torchrun / accelerate launch) split the shards.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import AutoConfig

from axolotl_dskd.distill.vocabulary import Vocabulary, vocabulary
from axolotl_dskd.integration.data_check import response_tokens_per_row
from axolotl_dskd.teacher.cache import (
    HEAD_FILE,
    Manifest,
    ShardStamp,
    SplitInfo,
    TeacherCacheError,
    dataset_keys,
    fingerprint,
    per_row,
    rows_digest,
    shard_name,
    verify_shard,
    write_shard,
)
from axolotl_dskd.teacher.loading import DTYPES, TeacherSpec, load_teacher, output_head, resolve_dtype
from axolotl_dskd.teacher.source import LiveTeacher

LOG = logging.getLogger(__name__)


def _load_cfg_without_cache(config: str) -> tuple[Any, str | None]:
    """The config as training reads it, less `dskd_teacher_cache` (which names the cache
    being built, and would be checked against a manifest that does not exist yet), and
    that cache folder."""
    from axolotl.cli.config import load_cfg

    raw = yaml.safe_load(Path(config).read_text())
    cache_dir = raw.pop("dskd_teacher_cache", None)
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        yaml.safe_dump(raw, handle)
    try:
        return load_cfg(handle.name), cache_dir
    finally:
        os.unlink(handle.name)


def _padding(cfg: Any) -> dict[str, int]:
    """Axolotl's rule for padding a training batch (a multiple of 64 by default, the whole
    `sequence_len` with `pad_to_sequence_len`): the teacher then reads each row in the
    shape training gives it."""
    multiple = cfg.get("pad_to_multiple_of") or 64
    if cfg.get("pad_to_sequence_len"):
        return {"pad_to_multiple_of": multiple * math.ceil(cfg.sequence_len / multiple)}
    if cfg.get("pad_to_sequence_len") is None:
        return {"pad_to_multiple_of": multiple}
    return {}


def _collator(cfg: Any, tokenizer: Any) -> Any:
    """The collator a training run of `cfg` uses, without a cache to read from."""
    from axolotl_dskd.integration.plugin import DSKDPlugin

    collator_cls, kwargs = DSKDPlugin().get_collator_cls_and_kwargs(cfg)
    return collator_cls(tokenizer, padding=True, return_tensors="pt", **_padding(cfg), **kwargs)


def teacher_rows_by_row(
    teacher: torch.nn.Module, batch: dict[str, torch.Tensor], vocab: Vocabulary
) -> list[torch.Tensor]:
    """The teacher's hidden rows the loss reads, split per batch row, in the loss's order."""
    rows = vocab.rows(batch)
    hidden_rows = LiveTeacher().rows(teacher, batch, rows, vocab)
    return per_row(hidden_rows, rows.teacher_index[0], batch["labels"].shape[0])


def stale_reason(path: Path, build: str, keys: list[str]) -> str | None:
    """Why an existing shard cannot be kept (None: it can)."""
    if not path.exists():
        return "missing"
    try:
        stamp = ShardStamp.read(path)
        if stamp.build != build:
            return "built with another teacher, adapter, dtype or settings"
        if stamp.rows != rows_digest(keys):
            return "the dataset's rows for it changed"
        verify_shard(path)
    except TeacherCacheError as error:
        return str(error).removeprefix("dskd_teacher_cache: ")
    return None


def remove_orphaned_temporaries(out: Path) -> None:
    """Half-written files of builds that were killed (named `.NAME.PID`; a live process's
    own are kept, so ranks building beside each other never lose theirs)."""
    for path in out.glob(".*.safetensors.*"):
        pid = path.name.rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_other_layouts(out: Path, split: str, shard_count: int) -> None:
    """Shards of this split from a build with another shard count (the data grew or shrank)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for path in out.glob(f"{split}-*-of-*.safetensors"):
        if not path.name.endswith(f"-of-{shard_count:05d}.safetensors"):
            LOG.warning("cache-teacher: removing %s: a shard of an earlier layout", path.name)
            path.unlink()


def build_split(
    teacher: torch.nn.Module,
    collator: Any,
    dataset: Any,
    out: Path,
    split: str,
    settings: argparse.Namespace,
    vocab: Vocabulary,
    build: str,
) -> SplitInfo:
    """Write this process's shards of one split (keeping finished ones of this build)."""
    keys = dataset_keys(dataset)
    shard_count = max(1, math.ceil(len(dataset) / settings.shard_rows))
    remove_other_layouts(out, split, shard_count)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    dtype = DTYPES[settings.dtype]
    mine = [index for index in range(shard_count) if index % world == rank]
    collated = ("input_ids", "attention_mask", "labels", "teacher_input_ids", "teacher_labels")
    columns = [name for name in collated if name in dataset.column_names]
    bar = tqdm(total=len(dataset), desc=f"cache-teacher {split}", disable=rank != 0)
    for index in mine:
        first, last = index * settings.shard_rows, min(len(dataset), (index + 1) * settings.shard_rows)
        name = shard_name(split, index, shard_count)
        reason = stale_reason(out / name, build, keys[first:last])
        if reason is None:
            bar.update(last - first)
            continue
        if reason != "missing":
            LOG.warning("cache-teacher: rewriting %s: %s", name, reason)
        stored: dict[str, torch.Tensor] = {}
        for start in range(first, last, settings.batch_size):
            indices = range(start, min(last, start + settings.batch_size))
            chunk = dataset[indices.start : indices.stop]
            features = [{column: chunk[column][k] for column in columns} for k in range(len(indices))]
            hidden_rows = teacher_rows_by_row(teacher, collator(features), vocab)
            for i, rows in zip(indices, hidden_rows, strict=True):
                stored.setdefault(keys[i], rows.to("cpu", dtype).clone())
            bar.update(len(indices))
        write_shard(out, name, stored, build)
    bar.close()
    return SplitInfo(rows=len(dataset), shards=shard_count, fingerprint=fingerprint(keys))


def write_cache(
    out: Path,
    teacher: torch.nn.Module,
    collator: Any,
    splits: dict[str, Any],
    options: argparse.Namespace,
    settings: dict[str, Any],
    vocab: Vocabulary,
) -> Manifest:
    """Build every split's shards of this process; rank 0 then writes the head and the
    manifest (written last: a folder without it is no cache)."""
    out.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temporaries(out)
    head = output_head(teacher).detach()
    manifest = Manifest(
        settings=settings,
        dtype=options.dtype,
        hidden_size=head.shape[1],
        teacher_dtype=str(head.dtype).removeprefix("torch."),
    )
    for split, dataset in splits.items():
        if dataset is not None and len(dataset):
            manifest.splits[split] = build_split(teacher, collator, dataset, out, split, options, vocab, manifest.build)
    if int(os.environ.get("RANK", "0")) == 0:
        temporary = out / f".{HEAD_FILE}.{os.getpid()}"
        save_file({"weight": head.to("cpu").contiguous()}, str(temporary))
        os.replace(temporary, out / HEAD_FILE)
        manifest.write(out)
    return manifest


def unwritable(out: Path) -> str | None:
    """Why the cache folder cannot be written (None: it can), found before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        return error.strerror or str(error)
    return None


def cache_bytes(datasets: dict[str, Any], teacher_hidden: int, dtype: torch.dtype) -> int:
    """An upper bound on the cache's size: one teacher row per response token (a pair
    across tokenizers is at most that), `teacher_hidden` values of `dtype` each."""
    tokens = sum(sum(response_tokens_per_row(dataset)) for dataset in datasets.values() if dataset is not None)
    return tokens * teacher_hidden * dtype.itemsize


def too_little_space(out: Path, needed: int) -> str | None:
    """Why the cache will not fit on `out`'s disk (None: it will), before the teacher pass."""
    free = shutil.disk_usage(out).free
    if free >= needed:
        return None
    return (
        f"the cache needs up to {needed / 2**30:.2f} GiB and {out} has {free / 2**30:.2f} GiB free; "
        "free some space or pick another --out"
    )


def verify(out: Path) -> int:
    """Check every shard of a built cache against its stamp and contents digest."""
    try:
        manifest = Manifest.read(out)
        manifest.check_shards(out)
        for name in tqdm(manifest.shard_names(), desc="cache-teacher verify"):
            verify_shard(out / name)
    except TeacherCacheError as error:
        print(f"cache-teacher: {error}")
        return 1
    print(f"cache-teacher: {out}: {len(manifest.shard_names())} shards verified")
    return 0


def cache_teacher(args: argparse.Namespace) -> int:
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.common.datasets import load_datasets
    from axolotl.loaders import load_tokenizer

    from axolotl_dskd.integration.plugin_entry import plugin_problem_in
    from axolotl_dskd.teacher.identity import teacher_cache_settings

    problem = plugin_problem_in(args.config)
    if problem:
        print(f"cache-teacher: {args.config}: {problem}")
        return 2
    cfg, cache_dir = _load_cfg_without_cache(args.config)
    if not cfg.get("dskd_teacher_model"):
        print(f"cache-teacher: {args.config} has no dskd_teacher_model (is axolotl_dskd.DSKDPlugin in plugins?)")
        return 2
    out_dir = args.out or cache_dir
    if not out_dir:
        print("cache-teacher: give --out DIR or set dskd_teacher_cache in the config")
        return 2
    out = Path(out_dir)
    if args.verify:
        return verify(out)
    problem = unwritable(out)
    if problem:
        print(f"cache-teacher: cannot write the cache to {out}: {problem}")
        return 2
    args.dtype = args.dtype or cfg.dskd_teacher_cache_dtype
    args.batch_size = args.batch_size or cfg.micro_batch_size or 1
    data = load_datasets(cfg=cfg, cli_args=TrainerCliArgs())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    splits = {"train": data.train_dataset, "eval": data.eval_dataset}
    hidden = AutoConfig.from_pretrained(cfg.dskd_teacher_model, revision=cfg.dskd_teacher_revision).get_text_config()
    problem = too_little_space(out, cache_bytes(splits, hidden.hidden_size, DTYPES[args.dtype]))
    if problem:
        print(f"cache-teacher: {problem}")
        return 2
    spec = TeacherSpec.from_settings(cfg, resolve_dtype(cfg.dskd_teacher_dtype, cfg.torch_dtype))
    tokenizer = load_tokenizer(cfg)
    write_cache(
        out,
        load_teacher(spec, device),
        _collator(cfg, tokenizer),
        splits,
        args,
        teacher_cache_settings(cfg),
        vocabulary(cfg, tokenizer),
    )
    total = sum(path.stat().st_size for path in out.glob("*.safetensors"))
    print(f"cache-teacher: wrote {out} ({total / 2**20:.1f} MiB, {args.dtype})")
    return 0
