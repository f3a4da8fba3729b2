"""Generate ``docs/config.md`` (the config reference) from the schema's field docstrings.

``python -m rlkit.config.docs > docs/config.md`` regenerates it; ``--check FILE`` fails when FILE is
out of date (nox's docs session and a unit test run it).
"""

from __future__ import annotations

import sys
from itertools import groupby
from pathlib import Path

from rlkit.config.fields import schema_fields
from rlkit.config.ranges import describe_range


def render() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from the schema (`src/rlkit/config/schema.py`) by `python -m rlkit.config.docs`; do not edit by hand.",
        "Values are applied in this order: recipe, `--profile`, `--config FILE`, then `KEY=VALUE`.",
        "Keys marked *profile* are the hardware, parallelism, batch and memory keys a profile may set.",
        "A value outside a key's valid range, or not one of its choices, fails at compose time.",
        "`rlkit config RECIPE --sources` shows where each value of a run came from.",
        "",
    ]
    for group, infos in groupby(schema_fields().values(), key=lambda i: i.key.split(".")[0]):
        lines += [f"## `{group}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for info in infos:
            doc = info.doc.replace("|", "\\|")
            if info.bounds or info.allow:
                doc += f" Valid: {describe_range(info)}."
            if info.unbounded:
                doc += f" Any value: {info.unbounded}."
            if info.choices:
                doc += " One of: " + ", ".join(f"`{c}`" for c in info.choices) + "."
            if info.profile:
                doc += " *profile*"
            default = f"`{info.default!r}`".replace("|", "\\|")
            lines.append(f"| `{info.key}` | {info.type_name} | {default} | {doc} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = render()
    if argv[:1] == ["--check"]:
        path = Path(argv[1])
        if not path.is_file() or path.read_text() != text:
            print(f"{path} is out of date: run `python -m rlkit.config.docs > {path}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
