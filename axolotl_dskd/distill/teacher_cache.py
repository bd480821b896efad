"""The offline teacher: its last hidden states at the rows the loss reads, and its head.

DSKD reads the teacher through two things only: the post-final-norm hidden state at each
response position the loss pairs (every response position with one vocabulary, the
aligned ones with two) and the output head. Stored once, they stand in for the teacher's
body, and every loss term (the cross-tokenizer ones included) is computed as with the live
teacher. Rows are found by a digest of the student's tokens and labels, so any sampler,
shuffling or rank split finds them; shards are safetensors files, memory-mapped on read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = 1
MANIFEST = "manifest.json"
HEAD_FILE = "teacher_head.safetensors"
CACHE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# the batch fields a cached batch carries instead of running the teacher
CACHED_ROWS = "teacher_cached_rows"  # [teacher rows of the batch, hidden], in the loss's pair order
CACHED_COUNTS = "teacher_cached_counts"  # [batch]: how many of those rows each batch row holds


class TeacherCacheError(RuntimeError):
    """A cache that cannot serve this run: stale, incomplete, or missing rows."""


def row_key(input_ids: Sequence[int], labels: Sequence[int]) -> str:
    """The digest that names one row: its student tokens and which of them are trained.
    Only the first len(input_ids) labels count: Axolotl's collator pads a row's labels in
    place, so a row seen twice may carry padding the second time."""
    digest = hashlib.sha256(np.asarray(input_ids, dtype=np.int64).tobytes())
    digest.update(b"|")
    digest.update(np.asarray(labels[: len(input_ids)], dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def dataset_keys(dataset: Any) -> list[str]:
    """Every row's key, in dataset order."""
    return [row_key(ids, labels) for ids, labels in zip(dataset["input_ids"], dataset["labels"], strict=True)]


def fingerprint(keys: Iterable[str]) -> str:
    """What a split holds, independent of row order (samplers shuffle)."""
    return hashlib.sha256("\n".join(sorted(set(keys))).encode()).hexdigest()[:32]


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.safetensors"


@dataclass
class SplitInfo:
    rows: int
    shards: int
    fingerprint: str


@dataclass
class Manifest:
    """What the cache was built from (`settings`, compared key by key with a run's) and
    how it is laid out."""

    settings: dict[str, Any]
    dtype: str
    hidden_size: int
    teacher_dtype: str
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    format: int = FORMAT

    def write(self, directory: Path) -> None:
        temporary = directory / f".{MANIFEST}.{os.getpid()}"
        temporary.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(temporary, directory / MANIFEST)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise TeacherCacheError(
                f"dskd_teacher_cache: {directory} has no {MANIFEST}; build it with `axolotl-dskd cache-teacher cfg.yml`"
            )
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise TeacherCacheError(
                f"dskd_teacher_cache: {directory} has cache format {data.get('format')}, this version reads {FORMAT}; "
                "rebuild it"
            )
        data["splits"] = {name: SplitInfo(**info) for name, info in data["splits"].items()}
        return cls(**data)

    def difference(self, settings: dict[str, Any]) -> str | None:
        """The first setting this run has another value for, as `key: cache vs run`."""
        for key in sorted(set(self.settings) | set(settings)):
            built, wanted = self.settings.get(key), settings.get(key)
            if built != wanted:
                return f"{key}: the cache has {built!r}, this run {wanted!r}"
        return None


def write_shard(directory: Path, name: str, rows: dict[str, torch.Tensor]) -> None:
    """Written whole or not at all: an interrupted build leaves no half shard behind."""
    temporary = directory / f".{name}.{os.getpid()}"
    save_file({key: tensor.contiguous() for key, tensor in rows.items()}, str(temporary))
    os.replace(temporary, directory / name)


def per_row(teacher_rows: torch.Tensor, batch_rows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split the loss's teacher rows of a batch by the batch row they come from (they are
    grouped by row, in row order: what makes a batch's cached rows a concatenation)."""
    if batch_rows.numel() > 1 and bool((batch_rows[1:] < batch_rows[:-1]).any()):
        raise ValueError("teacher rows of a batch must be grouped by batch row, in order")
    counts = torch.bincount(batch_rows.cpu(), minlength=batch_size).tolist()
    return list(torch.split(teacher_rows, counts))


class TeacherCache:
    """Read side of a built cache: the manifest, every shard memory-mapped, a row index."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = Manifest.read(self.directory)
        self._shards: dict[str, Any] = {}
        self._where: dict[str, str] = {}
        for split, info in self.manifest.splits.items():
            for index in range(info.shards):
                name = shard_name(split, index, info.shards)
                if not (self.directory / name).is_file():
                    raise TeacherCacheError(
                        f"dskd_teacher_cache: {self.directory} is incomplete ({name} is missing); "
                        "rerun `axolotl-dskd cache-teacher` to finish it"
                    )
                handle = safe_open(str(self.directory / name), framework="pt")
                self._shards[name] = handle
                for key in handle.keys():
                    self._where.setdefault(key, name)

    def check_split(self, split: str, keys: Iterable[str]) -> None:
        """The run's prepared rows are the rows the cache was built from."""
        info = self.manifest.splits.get(split)
        if info is None:
            raise TeacherCacheError(
                f"dskd_teacher_cache: {self.directory} holds no {split} rows; rebuild it from this config"
            )
        found = fingerprint(keys)
        if found != info.fingerprint:
            raise TeacherCacheError(
                f"dskd_teacher_cache: {self.directory} was built from other {split} rows (dataset fingerprint "
                f"{info.fingerprint}, this run {found}); rebuild it from this config"
            )

    def rows(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The batch fields for rows `keys`: their teacher rows concatenated, and counts."""
        tensors = []
        for position, key in enumerate(keys):
            name = self._where.get(key)
            if name is None:
                raise TeacherCacheError(
                    f"dskd_teacher_cache: row {position} of this batch (key {key}) is not in {self.directory}; "
                    "the cache was built from other data: rebuild it"
                )
            tensors.append(self._shards[name].get_tensor(key))
        counts = torch.tensor([tensor.shape[0] for tensor in tensors], dtype=torch.long)
        if tensors:
            stacked = torch.cat(tensors)
        else:
            stacked = torch.zeros((0, self.manifest.hidden_size), dtype=CACHE_DTYPES[self.manifest.dtype])
        return {CACHED_ROWS: stacked, CACHED_COUNTS: counts}

    def head(self) -> torch.Tensor:
        return load_file(str(self.directory / HEAD_FILE))["weight"]


class HeadOnlyTeacher(nn.Module):
    """The teacher as a cached run holds it: the output head, frozen, and no body."""

    def __init__(self, head: torch.Tensor) -> None:
        super().__init__()
        self.lm_head = nn.Linear(head.shape[1], head.shape[0], bias=False, dtype=head.dtype, device=head.device)
        self.lm_head.weight.data.copy_(head)
        self.requires_grad_(False)
        self.eval()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


def cached_teacher_rows(inputs: dict[str, torch.Tensor], batch_rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The batch's cached teacher rows, after checking they are the rows this run pairs."""
    expected = torch.bincount(batch_rows.cpu(), minlength=inputs[CACHED_COUNTS].numel())
    if not torch.equal(expected, inputs[CACHED_COUNTS].cpu()):
        raise TeacherCacheError(
            f"dskd_teacher_cache: the cache holds {inputs[CACHED_COUNTS].tolist()} teacher rows for this batch's rows, "
            f"this run pairs {expected.tolist()}; it was built with other alignment settings: rebuild it"
        )
    return inputs[CACHED_ROWS].to(dtype)
