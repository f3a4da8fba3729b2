"""Dataset preparation for ``rlkit data NAME``: one module per dataset, and the registry below.

Each module maps a raw row to one row of verl's RL parquet schema (``map_row(row, index, split)``,
returning None to skip a row) or generates schema rows offline (``generate(n, seed, ...)`` and
``generate_splits(num_train, num_test, seed, ...)``). The registry is plain data, read by
``rlkit data`` (see :mod:`rlkit.data.prepare`) and by the trainer, which generates the synthetic
tasks in-process when no data files are given.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlkit.data_prep import arith, arith_tools, countdown, gsm8k, hh_rlhf, math
from rlkit.errors import UserError

MapFn = Callable[[dict[str, Any], int, str], dict[str, Any] | None]
SplitGenerator = Callable[..., dict[str, list[dict[str, Any]]]]


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset ``rlkit data`` knows by name."""

    name: str
    """What users type: ``rlkit data NAME``."""
    description: str
    """One line for the dataset table."""
    hub_id: str | None
    """Hugging Face dataset repo of the raw data; None for datasets generated offline."""
    hub_config: str | None = None
    """Config (subset) of the hub dataset, e.g. ``main`` for GSM8K."""
    map_fn: MapFn | None = None
    """Raw row -> schema row (None skips the row); for hub datasets."""
    generator: SplitGenerator | None = None
    """``(num_train, num_test, seed, **options) -> {"train": rows, "test": rows}``; for generated data."""
    has_splits: bool = True
    """The raw dataset comes with train and test splits of its own."""
    required_columns: tuple[str, ...] = ()
    """Raw columns ``map_fn`` reads (checked up front so a missing one is named clearly)."""
    default_size: int = 0
    """Rows generated when ``--size`` is not given (generated datasets only)."""


DATASETS: tuple[DatasetEntry, ...] = (
    DatasetEntry(
        "gsm8k",
        "Grade-school math word problems; answer after '####' (verl's gsm8k.py)",
        hub_id="openai/gsm8k",
        hub_config="main",
        map_fn=gsm8k.map_row,
        required_columns=gsm8k.REQUIRED_COLUMNS,
    ),
    DatasetEntry(
        "math",
        "Competition math (MATH-lighteval); answer in the last \\boxed{}",
        hub_id=math.DATA_SOURCE,
        map_fn=math.map_row,
        required_columns=math.REQUIRED_COLUMNS,
    ),
    DatasetEntry(
        "hh_rlhf",
        "Anthropic HH-RLHF preference pairs (chosen/rejected) for SPIN / SPPO",
        hub_id="Anthropic/hh-rlhf",
        map_fn=hh_rlhf.map_row,
        required_columns=hh_rlhf.REQUIRED_COLUMNS,
    ),
    DatasetEntry(
        "countdown",
        "Generated offline: reach a target with +-*/ over 3-4 numbers (TinyZero)",
        hub_id=None,
        generator=countdown.generate_splits,
        has_splits=False,
        default_size=10_000,
    ),
    DatasetEntry(
        "arith",
        "Generated offline: short multi-digit arithmetic ('23+45=' -> 68); the embedded default's task",
        hub_id=None,
        generator=arith.generate_splits,
        has_splits=False,
        default_size=10_000,
    ),
    DatasetEntry(
        "arith_tools",
        "Generated offline: 3-digit x 2-digit products with the calculator tool ('123*45=' -> 5535); the tool-use task",
        hub_id=None,
        generator=arith_tools.generate_splits,
        has_splits=False,
        default_size=10_000,
    ),
)


def dataset_names() -> list[str]:
    return [entry.name for entry in DATASETS]


def find_dataset(name: str) -> DatasetEntry | None:
    """The registry entry called ``name``, or None."""
    return next((entry for entry in DATASETS if entry.name == name), None)


def get_dataset(name: str) -> DatasetEntry:
    """The registry entry called ``name``; a UserError listing the known names otherwise."""
    entry = find_dataset(name)
    if entry is not None:
        return entry
    close = difflib.get_close_matches(name, dataset_names(), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UserError(
        f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}",
        hint=hint + "or pass --map-fn FILE.py:FUNC (with --source) for your own",
    )
