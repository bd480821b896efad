"""The configuration reference page, generated from the schema: every `dskd_` key with its
type, default and description, as `docs/configuration.md` shows it (a test keeps the page
equal to this). Regenerate with `python -m axolotl_dskd.integration.key_reference`."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from axolotl_dskd.integration.args import DSKDArgs

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BEGIN = "<!-- generated from the schema by `python -m axolotl_dskd.integration.key_reference`: do not edit -->"
END = "<!-- end of the generated table -->"
NOT_SET = {"dskd_teacher_model": "required", "dskd_cross_tokenizer": "decided"}


def type_name(annotation: Any) -> str:
    """`bool`, `int`, `float`, `string`, `one of: a, b`, with `or null` where None is allowed."""
    if get_origin(annotation) is Literal:
        return "one of: " + ", ".join(f"`{choice}`" for choice in get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        names = [type_name(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " or ".join(names) + " or null"
    return {bool: "bool", int: "int", float: "float", str: "string"}[annotation]


def default_cell(key: str, default: Any) -> str:
    if key in NOT_SET:
        return NOT_SET[key]
    if default is None:
        return "`null`"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default}`"


def table() -> str:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, info in DSKDArgs.model_fields.items():
        description = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{key}` | {type_name(info.annotation)} | {default_cell(key, info.default)} | {description} |")
    return "\n".join(lines)


def generated_block(page_text: str) -> str:
    """The table as the page holds it now."""
    return page_text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def write(page: Path = PAGE) -> None:
    text = page.read_text()
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    page.write_text(f"{before}{BEGIN}\n{table()}\n{END}{after}")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else PAGE)
    print(f"wrote the key reference into {PAGE}")
