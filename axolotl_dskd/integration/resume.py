"""Which checkpoint a resumed DSKD run starts from, decided before any model loads.

A DSKD checkpoint is the student's (HF writes it) plus the t2s projector (we write it
after). A kill between the two leaves a checkpoint without its projector; resuming from it
would restore the student and lose the projector's training. Such a checkpoint is never
picked silently: auto-resume falls back to the newest complete one with a WARNING naming
both, and an explicit `resume_from_checkpoint` to an incomplete one stops with one line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safetensors import safe_open

from axolotl_dskd.errors import DSKDConfigError
from axolotl_dskd.integration.run_record import ACCEPT_KEY, RECORD_FILE, read_record, record_difference, run_record
from axolotl_dskd.loss.config import LossConfig
from axolotl_dskd.loss.objectives import objective

LOG = logging.getLogger(__name__)
PROJECTOR_FILE = "dskd_projector.safetensors"


def missing_part(checkpoint: Path) -> str | None:
    """What a checkpoint lacks to resume a DSKD run (None: nothing)."""
    if not (checkpoint / "trainer_state.json").is_file():
        return "no trainer_state.json"
    projector = checkpoint / PROJECTOR_FILE
    if not projector.is_file():
        return f"no {PROJECTOR_FILE}"
    try:
        with safe_open(str(projector), framework="pt") as handle:
            for key in handle.keys():
                handle.get_tensor(key)
    except Exception as error:  # safetensors raises its own types for damaged files
        return f"an unreadable {PROJECTOR_FILE} ({error})"
    return None


def trains_projector(cfg: Any) -> bool:
    return objective(cfg.get("dskd_method") or LossConfig.method).trains_projector


def checkpoints(output_dir: str) -> list[Path]:
    """The run's checkpoints, newest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True)


def choose_checkpoint(cfg: Any) -> None:
    """Check an explicit `resume_from_checkpoint`, or point auto-resume at the newest
    complete checkpoint (Axolotl itself would take the newest one, complete or not); then
    check that the checkpoint was trained with this config's teacher and modes."""
    explicit = cfg.get("resume_from_checkpoint")
    chosen = Path(explicit) if explicit else complete_newest(cfg)
    if chosen is None:
        return
    key = "resume_from_checkpoint" if explicit else "auto_resume_from_checkpoints"
    if explicit and trains_projector(cfg):
        problem = missing_part(chosen)
        if problem:
            raise DSKDConfigError(
                f"resume_from_checkpoint: {explicit} has {problem}, so the DSKD run cannot be restored from it "
                "(a run killed while saving leaves such a checkpoint); point it at an earlier checkpoint"
            )
    check_same_run(chosen, cfg, key)


def complete_newest(cfg: Any) -> Path | None:
    """The checkpoint auto-resume will use (set as `resume_from_checkpoint` when the newest
    is incomplete), or None when the run starts afresh."""
    if not cfg.get("auto_resume_from_checkpoints") or not cfg.get("output_dir"):
        return None
    found = checkpoints(cfg["output_dir"])
    if not found:
        return None
    newest, problem = found[0], missing_part(found[0])
    if problem is None or not trains_projector(cfg):  # vanilla KD has no projector to restore
        return newest
    complete = next((checkpoint for checkpoint in found[1:] if missing_part(checkpoint) is None), None)
    if complete is None:
        raise DSKDConfigError(
            f"auto_resume_from_checkpoints: no checkpoint in {cfg['output_dir']} is complete (the newest, "
            f"{newest}, has {problem}); remove the incomplete ones to start afresh"
        )
    LOG.warning(
        "dskd: %s has %s (a run killed while saving leaves that); resuming from %s instead", newest, problem, complete
    )
    cfg["resume_from_checkpoint"] = str(complete)
    return complete


def check_same_run(checkpoint: Path, cfg: Any, key: str) -> None:
    """Stop before any model loads when the checkpoint was trained with another teacher,
    adapter, method, vocabulary mode or alignment, unless the config accepts that."""
    recorded = read_record(checkpoint)
    if recorded is None:
        LOG.warning(
            "dskd: %s has no %s (written before axolotl-dskd recorded what a run trains with); resuming without "
            "checking that the teacher and modes are the same",
            checkpoint,
            RECORD_FILE,
        )
        return
    difference = record_difference(recorded, run_record(cfg))
    if difference is None:
        return
    if cfg.get(ACCEPT_KEY):
        LOG.warning("dskd: resuming %s although it was trained with another setup (%s)", checkpoint, difference)
        return
    raise DSKDConfigError(
        f"{key}: {checkpoint} was trained with another setup ({difference}), and its t2s projector fits that one; "
        f"start afresh with a new output_dir, or set {ACCEPT_KEY}: true to resume it on purpose"
    )
