"""Print the node's parameter table (markdown) from ovs_ros/node/params.py, for docs/ros_interface.md.

    python tools/param_table.py > /tmp/table.md    # then paste it under "## Parameters"

test/test_docs.py checks that the table in the docs is this one.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ovs_ros.node.params import PARAMS, TYPED_EMPTY  # noqa: E402


def _allowed(spec) -> str:
    if spec.choices is not None:
        return ", ".join(f"`{c!r}`" if isinstance(c, str) else f"`{c}`" for c in spec.choices)
    if spec.int_range is not None:
        return f"{spec.int_range[0]}..{spec.int_range[1]}"
    if spec.float_range is not None:
        return f"{spec.float_range[0]}..{spec.float_range[1]}"
    if spec.pattern is not None:
        return f"matches `{spec.pattern}`"
    return ""


def table() -> str:
    rows = ["| name | default | read-only | allowed | what it does |", "|---|---|---|---|---|"]
    for spec in PARAMS:
        default = "`[]` (string array)" if spec.default in TYPED_EMPTY else f"`{spec.default!r}`"
        cells = [f"`{spec.name}`", default, "yes" if spec.read_only else "no", _allowed(spec), spec.description]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
