"""The offline teacher: its last hidden states at the rows the loss reads, and its head.

DSKD reads the teacher through two things only: the post-final-norm hidden state at each
response position the loss pairs (every response position with one vocabulary, the
aligned ones with two) and the output head. Stored once, they stand in for the teacher's
body, and every loss term (the cross-tokenizer ones included) is computed as with the live
teacher. Rows are found by a digest of the student's tokens and labels, so any sampler,
shuffling or rank split finds them; shards are safetensors files, memory-mapped on read.

Every shard carries, in its own safetensors metadata, the build it belongs to (a digest of
the manifest's settings, the teacher's weights included), a digest of the row keys it
holds and a digest of its contents. A rebuild keeps only shards whose three still match,
the settings check (before any model loads) reads every shard's header, and a shard's
contents are checked against their digest the first time training reads from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from axolotl_dskd.teacher.loading import DTYPES

FORMAT = 2  # 2: shards carry build, rows and content digests
MANIFEST = "manifest.json"
HEAD_FILE = "teacher_head.safetensors"
# how `cache-teacher` may store hidden states (names of teacher.loading.DTYPES), the default first
CACHE_DTYPES = ("bfloat16", "float16", "float32")
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


def weights_identity(path: str | None) -> str | None:
    """What names a local model or adapter folder's weights without reading them whole: each
    weight file's name, size, and a digest of its first 1 MiB and of 64 blocks of 64 KiB
    spread over it, so retraining into the same folder (new values, same names and sizes)
    changes it. Hub ids are named by their id and revision in the settings instead."""
    if not path or not Path(path).is_dir():
        return None
    digest = hashlib.sha256()
    files = sorted(p for p in Path(path).iterdir() if p.suffix in {".safetensors", ".bin"} and p.is_file())
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}|".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            for block in range(64):
                handle.seek(block * size // 64)
                digest.update(handle.read(1 << 16))
    return digest.hexdigest()[:32]


def rows_digest(keys: Iterable[str]) -> str:
    """Which rows a shard holds, whatever their order."""
    return hashlib.sha256("\n".join(sorted(set(keys))).encode()).hexdigest()[:32]


def contents_digest(keys: Iterable[str], tensor: Callable[[str], torch.Tensor]) -> str:
    """A digest of every stored value, by key (`tensor(key)` reads one): what a flipped bit
    in a shard changes."""
    digest = hashlib.sha256()
    for key in sorted(keys):
        digest.update(key.encode())
        digest.update(tensor(key).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardStamp:
    """What a shard says of itself (its safetensors metadata)."""

    build: str
    rows: str
    contents: str

    @classmethod
    def read(cls, path: Path) -> ShardStamp:
        """The stamp from the shard's header; a truncated or foreign file is named."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except Exception as error:  # safetensors raises its own types for unreadable headers
            raise TeacherCacheError(
                f"dskd_teacher_cache: {path} is unreadable ({error}); rebuild it with `axolotl-dskd cache-teacher "
                "cfg.yml`, which rewrites only the shards that are damaged"
            ) from None
        if not {"build", "rows", "contents"} <= set(metadata):
            raise TeacherCacheError(f"dskd_teacher_cache: {path} has no build stamp; rebuild the cache")
        return cls(metadata["build"], metadata["rows"], metadata["contents"])


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

    @property
    def build(self) -> str:
        """The digest every shard of this build carries: settings (teacher weights
        included), storage dtype and the teacher's dtype."""
        identity = {"settings": self.settings, "dtype": self.dtype, "teacher_dtype": self.teacher_dtype}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def shard_names(self) -> list[str]:
        return [shard_name(split, i, info.shards) for split, info in self.splits.items() for i in range(info.shards)]

    def check_shards(self, directory: Path) -> None:
        """Every shard is there, readable, and of this build (headers only: cheap enough to
        run before any model loads)."""
        for name in self.shard_names():
            if not (directory / name).is_file():
                raise TeacherCacheError(
                    f"dskd_teacher_cache: {directory} is incomplete ({name} is missing); "
                    "rerun `axolotl-dskd cache-teacher` to finish it"
                )
            if ShardStamp.read(directory / name).build != self.build:
                raise TeacherCacheError(
                    f"dskd_teacher_cache: {directory / name} belongs to another build than the manifest; "
                    "rerun `axolotl-dskd cache-teacher` to rewrite it"
                )

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


def write_shard(directory: Path, name: str, rows: dict[str, torch.Tensor], build: str) -> None:
    """Written whole or not at all (an interrupted build leaves no half shard behind),
    stamped with its build, its rows and a digest of its contents."""
    tensors = {key: tensor.contiguous() for key, tensor in rows.items()}
    stamp = {"build": build, "rows": rows_digest(tensors), "contents": contents_digest(tensors, tensors.__getitem__)}
    temporary = directory / f".{name}.{os.getpid()}"
    save_file(tensors, str(temporary), metadata=stamp)
    os.replace(temporary, directory / name)


def verify_shard(path: Path) -> None:
    """The shard's contents still match the digest written with them."""
    stamp = ShardStamp.read(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            found = contents_digest(handle.keys(), handle.get_tensor)
    except Exception as error:  # a truncated data section fails while reading
        raise TeacherCacheError(f"dskd_teacher_cache: {path} is unreadable ({error}); rebuild the cache") from None
    if found != stamp.contents:
        raise TeacherCacheError(
            f"dskd_teacher_cache: {path} is corrupted (its contents differ from the digest written when it was "
            "built); rerun `axolotl-dskd cache-teacher cfg.yml`, which rewrites only the damaged shards"
        )


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
        self._verified: set[str] = set()
        self.manifest.check_shards(self.directory)
        for name in self.manifest.shard_names():
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
            if name not in self._verified:  # once per shard: one read of its bytes
                verify_shard(self.directory / name)
                self._verified.add(name)
            tensors.append(self._shards[name].get_tensor(key))
        counts = torch.tensor([tensor.shape[0] for tensor in tensors], dtype=torch.long)
        if tensors:
            stacked = torch.cat(tensors)
        else:
            stacked = torch.zeros((0, self.manifest.hidden_size), dtype=DTYPES[self.manifest.dtype])
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


def head_only_teacher(
    directory: str, dtype: torch.dtype, device: torch.device, datasets: dict[str, Any]
) -> HeadOnlyTeacher:
    """The teacher's head from the cache, once the cache is shown to hold the rows of
    `datasets` (split name -> dataset or None; the YAML check compared the settings, the rows
    need the prepared datasets)."""
    cache = TeacherCache(directory)
    built_dtype = cache.manifest.teacher_dtype
    if built_dtype != str(dtype).removeprefix("torch."):
        raise TeacherCacheError(
            f"dskd_teacher_cache: the cache was built with a {built_dtype} teacher, this run's teacher dtype is "
            f"{dtype}; rebuild it with `axolotl-dskd cache-teacher cfg.yml`"
        )
    for split, dataset in datasets.items():
        if dataset is not None:
            cache.check_split(split, dataset_keys(dataset))
    return HeadOnlyTeacher(cache.head().to(device=device, dtype=dtype))
