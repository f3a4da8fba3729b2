"""``rlkit data NAME``: prepare a dataset as verl-schema train.parquet / test.parquet."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlkit.errors import UserError

if TYPE_CHECKING:
    from rlkit.data.prepare import PrepareResult

EPILOG = (
    "Example: [bold]rlkit data gsm8k[/] (from the Hub), [bold]rlkit data gsm8k --source gsm8k.jsonl[/], "
    "[bold]rlkit data arith --size 5000 --digits 3[/], [bold]rlkit data mine --source raw.jsonl "
    "--map-fn prep.py:map_row[/]"
)
_MAX_CELL = 160


def data(
    name: str = typer.Argument("", help="Dataset name (omit to list them); any name with --map-fn."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default data/NAME)."),
    source: Path = typer.Option(
        None, "--source", "-s", help="Local .jsonl/.json/.parquet or dataset folder."
    ),
    seed: int = typer.Option(1, "--seed", help="Seed of generated rows and of splits rlkit makes."),
    limit: int = typer.Option(None, "--limit", help="Keep at most N rows per split."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Held-out share when rlkit splits."),
    map_fn: str = typer.Option(None, "--map-fn", help="FILE.py:FUNC mapping a raw row to a schema row."),
    size: int = typer.Option(None, "--size", help="arith, countdown: rows to generate (default 10000)."),
    digits: int = typer.Option(None, "--digits", help="arith: digits per operand (default 2)."),
    ops: str = typer.Option(None, "--ops", help="arith: operations out of +-*/ (default +-)."),
    numbers: str = typer.Option(
        None, "--numbers", help="countdown: numbers per instance: 4 or 3-4 (default)."
    ),
    max_number: int = typer.Option(None, "--max-number", help="countdown: largest number (default 99)."),
    max_target: int = typer.Option(None, "--max-target", help="countdown: largest target (default 100)."),
    force: bool = typer.Option(False, "--force", help="Replace train.parquet/test.parquet already in DIR."),
) -> None:
    """Write DIR/train.parquet and DIR/test.parquet in verl's RL schema (run without NAME to list datasets)."""
    from rlkit.data.prepare import prepare_dataset  # pyarrow and datasets load only when used

    if not name:
        _list_datasets()
        return
    options = {"size": size, "digits": digits, "ops": ops, "max_number": max_number, "max_target": max_target}
    if numbers is not None:
        options["min_numbers"], options["max_numbers"] = _number_range(numbers)
    result = prepare_dataset(
        name,
        out=out,
        source=source,
        seed=seed,
        limit=limit,
        test_fraction=test_fraction,
        map_fn=map_fn,
        options=options,
        force=force,
    )
    _summary(result)


def _number_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise UserError(f"--numbers {text!r}: expected N or MIN-MAX, e.g. 3-4") from None


def _list_datasets() -> None:
    from rlkit.data_prep import DATASETS

    table = Table("dataset", "source", "description", title="rlkit data NAME")
    for entry in DATASETS:
        table.add_row(entry.name, entry.hub_id or "generated offline", entry.description)
    Console().print(table)


def _summary(result: PrepareResult) -> None:
    from rlkit.data.prepare import iter_rows

    console = Console()
    if result.note:
        console.print(f"[dim]{escape(result.note)}[/]", soft_wrap=True)
    counts = Table("split", "rows", "skipped", "file", title=f"wrote {escape(str(result.out))}")
    for path in result.files:
        split = path.stem
        counts.add_row(split, str(result.counts[split]), str(result.skipped.get(split, 0)), escape(str(path)))
    console.print(counts)
    sample = Table("column", "value", title="sample training row", show_lines=True)
    for key, value in iter_rows(result):
        text = repr(value) if not isinstance(value, str) else value
        if len(text) > _MAX_CELL:
            text = text[:_MAX_CELL] + " ..."
        sample.add_row(key, escape(text))
    console.print(sample)
