"""A dataset with no response token at all trains on nothing (loss 0 at every step, exit
0): refused before training. Typical causes: a `type:` whose fields do not match the rows,
`roles_to_train` naming no role the rows use, or every response cut by `sequence_len`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from axolotl_dskd.errors import DSKDConfigError
from axolotl_dskd.labels import IGNORE_INDEX

ROWS_PER_READ = 1024


def response_tokens_per_row(dataset: Any) -> Iterator[int]:
    """Each row's trained tokens (labels past the first, which no position predicts)."""
    for batch in dataset.select_columns(["labels"]).iter(batch_size=ROWS_PER_READ):
        for labels in batch["labels"]:
            yield sum(label != IGNORE_INDEX for label in labels[1:])


def has_response_tokens(dataset: Any) -> bool:
    """Whether any row trains a token (stops at the first that does: one read in practice)."""
    return any(count > 0 for count in response_tokens_per_row(dataset))


def check_response_tokens(datasets: dict[str, Any]) -> None:
    """Each split the trainer was given ("train", "eval") has at least one response token."""
    for split, dataset in datasets.items():
        if dataset is None or "labels" not in dataset.column_names or has_response_tokens(dataset):
            continue
        key = "datasets" if split == "train" else "val_set_size / test_datasets"
        raise DSKDConfigError(
            f"{key}: none of the {len(dataset)} {split} rows has a response token to train on (every label is "
            "masked), so the run would train on nothing; check the dataset's `type:` and field names, "
            "`roles_to_train`, `train_on_inputs`, or whether `sequence_len` cuts every response"
        )
