"""Repack a wheel without the files a target machine never loads, reproducibly.

    python scripts/wheelhouse_trim.py WHEEL PATTERN [PATTERN ...]

Members matching a PATTERN (fnmatch, against the path inside the wheel) are dropped, and
so are their lines in the wheel's RECORD; the rest is written back under the same name,
in sorted order with fixed timestamps, so the same input gives the same bytes.
"""

from __future__ import annotations

import fnmatch
import sys
import zipfile
from pathlib import Path

FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def trim(wheel: Path, patterns: list[str]) -> list[str]:
    """Drop the members matching `patterns`; return their names."""
    with zipfile.ZipFile(wheel) as source:
        members = {info.filename: source.read(info) for info in source.infolist()}
    dropped = sorted(name for name in members if any(fnmatch.fnmatch(name, pattern) for pattern in patterns))
    record = next(name for name in members if name.endswith(".dist-info/RECORD"))
    lines = members[record].decode().splitlines()
    members[record] = ("\n".join(line for line in lines if line.split(",")[0] not in dropped) + "\n").encode()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as target:
        for name in sorted(set(members) - set(dropped)):
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.external_attr = 0o755 << 16 if name.endswith((".so", "-core")) else 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, members[name])
    return dropped


if __name__ == "__main__":
    removed = trim(Path(sys.argv[1]), sys.argv[2:])
    print(f"trimmed {Path(sys.argv[1]).name}: {len(removed)} files dropped")
