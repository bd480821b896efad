"""One live run per output_dir: a second run started into a folder a live run writes
(the first one's launcher killed while its trainer child goes on, or the same command
started twice) would overwrite its checkpoints; it is refused before any model loads.

The lock is an flock on a file in output_dir, held by the training process for its
lifetime: the kernel releases it when that process ends, however it ends (kill -9 too).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from axolotl_dskd.errors import DSKDConfigError

LOCK_FILE = ".dskd-run.lock"


def hold_output_dir(output_dir: str) -> IO[str] | None:
    """Take the folder's lock (keep the returned file open for the run), or stop with one
    line naming the process that holds it. Only the main process takes it (None elsewhere)."""
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
        return None
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    handle = open(Path(output_dir) / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DSKDConfigError(
            f"output_dir: {output_dir} is in use by a live run ({holder}); two runs writing one folder overwrite "
            "each other's checkpoints. Wait for it or stop it (kill its process group), or pick another output_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle
