"""`axolotl-dskd plan cfg.yml`: the memory plan of a DSKD run, per GPU, before any model loads."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

from axolotl_dskd.integration.plugin_entry import plugin_problem_in
from axolotl_dskd.planning.memory import parse_size, plan


def one_line(error: Exception) -> str:
    """A validation error's messages on one line (pydantic's own text spans several)."""
    if hasattr(error, "errors"):
        return "; ".join(str(item.get("msg", "")).removeprefix("Value error, ") for item in error.errors())
    return " ".join(str(error).split()) or type(error).__name__


def plan_command(args: Any) -> int:

    problem = plugin_problem_in(args.config)
    if problem:
        print(f"plan: {args.config}: {problem}")
        return 2
    # Axolotl logs (to stdout) while it imports and loads, and prints the whole config; stdout is the plan's
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            from axolotl.cli.config import load_cfg

            cfg = load_cfg(args.config)
    except Exception as error:  # Axolotl's and the plugin's validation errors, as one line
        print(f"plan: {args.config} does not validate: {one_line(error)}")
        return 2
    finally:
        logging.disable(logging.NOTSET)
    if not cfg.get("dskd_teacher_model"):
        print(f"plan: {args.config} has no dskd_teacher_model (is axolotl_dskd.DSKDPlugin in plugins?)")
        return 2
    gpu_memory = parse_size(args.gpu_memory) if args.gpu_memory else None
    estimate = plan(cfg, gpu_memory, args.gpus)
    print(estimate.to_json() if args.json else estimate.table())
    return 0 if estimate.fits is not False else 1
