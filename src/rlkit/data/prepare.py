"""``rlkit data NAME``: raw rows -> verl-schema ``train.parquet`` and ``test.parquet``.

The steps: resolve the dataset (the registry in :mod:`rlkit.data_prep`, or a user's map function),
load the raw rows (``--source`` or the Hub) or generate them, split them when the source has no
split of its own, map every row, check it against the schema, build both Arrow tables, and only
then write both files (atomically). Every mistake a user can make is a :class:`UserError` raised
before anything is written.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlkit.data.rl_parquet import check_schema_row, rows_to_table, write_splits
from rlkit.data.sources import RawSplit, load_hub, load_local, train_test
from rlkit.data_prep import DatasetEntry, MapFn, find_dataset, get_dataset
from rlkit.errors import UserError
from rlkit.outputs import check_new_file

PROGRESS_MIN_ROWS = 5000
"""Inputs with fewer rows than this map without a progress bar."""


@dataclass
class PrepareResult:
    """What ``rlkit data`` wrote, for its summary."""

    out: Path
    files: list[Path]
    counts: dict[str, int]
    """Rows written per split."""
    origin: str
    """Where the raw rows came from (a path, a Hub id, or ``generated``)."""
    note: str | None = None
    """How the rows were split, when rlkit split them (not the source)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Rows the map function skipped (returned None) per split."""
    sample: dict[str, Any] = field(default_factory=dict)
    """The first training row."""


@dataclass
class _Mapper:
    """A map function plus how to name it and whether it is the user's (foreign exceptions wrapped)."""

    fn: MapFn
    label: str
    user: bool


def load_map_fn(spec: str) -> MapFn:
    """The function ``FUNC`` of the Python file ``FILE.py``, from ``--map-fn FILE.py:FUNC``.

    The function may take ``(row)``, ``(row, index)`` or ``(row, index, split)`` and returns a
    schema row, or None to skip the row. It is adapted to the three-argument form.

    Raises:
        UserError: A malformed spec, a missing file, a file that fails to import, or no such function.
    """
    path_text, sep, func = spec.rpartition(":")
    if not sep or not path_text or not func.isidentifier():
        raise UserError(
            f"--map-fn {spec!r}: expected FILE.py:FUNCTION", hint="e.g. --map-fn my_prep.py:map_row"
        )
    path = Path(path_text).expanduser()
    if path.suffix != ".py" or not path.is_file():
        raise UserError(f"--map-fn {spec!r}: no such Python file {path}")
    module_name = f"_rlkit_user_map_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file may raise anything while importing
        raise UserError(
            f"--map-fn: importing {path} failed: {type(exc).__name__}: {exc}",
            hint="rerun with --debug for the traceback",
        ) from exc
    fn = getattr(module, func, None)
    if not callable(fn):
        defined = [
            n for n, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module_name
        ]
        raise UserError(
            f"--map-fn: {path} defines no function {func!r}",
            hint=f"functions in it: {', '.join(defined) or 'none'}",
        )
    return _adapt(fn, spec)


def _adapt(fn: Callable[..., Any], spec: str) -> MapFn:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return fn
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return fn
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3:
        return fn
    if len(positional) == 2:
        return lambda row, index, split: fn(row, index)
    if len(positional) == 1:
        return lambda row, index, split: fn(row)
    raise UserError(f"--map-fn {spec!r}: the function must take (row), (row, index) or (row, index, split)")


def _progress(items: list[Any], description: str, enabled: bool) -> Iterator[Any]:
    if not enabled or len(items) < PROGRESS_MIN_ROWS:
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(items, description=description, console=Console(stderr=True), transient=True)


def _map_split(
    split: str, raw: RawSplit, mapper: _Mapper, progress: bool
) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    skipped = 0
    for i, row in enumerate(_progress(raw.rows, f"mapping {split}", progress)):
        try:
            mapped = mapper.fn(row, i, split)
        except UserError as exc:
            raise UserError(f"{mapper.label}: {raw.where(i)}: {exc.message}", hint=exc.hint) from exc
        except KeyError as exc:
            raise UserError(
                f"{mapper.label}: {raw.where(i)} has no column {exc.args[0]!r} "
                f"(columns present: {', '.join(map(str, row))})"
            ) from exc
        except Exception as exc:
            if not mapper.user:
                raise
            raise UserError(
                f"{mapper.label} failed on {raw.where(i)}: {type(exc).__name__}: {exc}",
                hint="rerun with --debug for the traceback",
            ) from exc
        if mapped is None:
            skipped += 1
            continue
        check_schema_row(mapped, f"{mapper.label}: {raw.where(i)}")
        mapped["extra_info"].setdefault("split", split)
        mapped["extra_info"].setdefault("index", i)
        rows.append(mapped)
    return rows, skipped


def _check_columns(entry: DatasetEntry, raw: RawSplit) -> None:
    present = raw.columns()
    missing = [name for name in entry.required_columns if name not in present]
    if missing:
        raise UserError(
            f"{entry.name}: {raw.label} has no column {', '.join(repr(m) for m in missing)} "
            f"(columns present: {', '.join(present) or 'none'})",
            hint=f"{entry.name} needs {', '.join(entry.required_columns)}; or map your own layout with --map-fn",
        )


def _generate(
    entry: DatasetEntry, seed: int, test_fraction: float, options: dict[str, Any]
) -> tuple[dict[str, list[dict[str, Any]]], str]:
    assert entry.generator is not None
    size = options.pop("size", None) or entry.default_size
    accepted = list(inspect.signature(entry.generator).parameters)[3:]
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise UserError(
            f"{entry.name} has no option {', '.join(unknown)}",
            hint=f"its options: size, {', '.join(accepted)}",
        )
    if size < 1 or not 0.0 <= test_fraction < 1.0:
        raise UserError(f"{entry.name}: need --size >= 1 and --test-fraction in [0, 1)")
    n_test = round(size * test_fraction)
    splits = entry.generator(size - n_test, n_test, seed, **options)
    return splits, f"generated {size} rows with --seed {seed}: {size - n_test} train / {n_test} test"


def _load_raw(
    name: str, entry: DatasetEntry | None, source: str | Path | None, seed: int, test_fraction: float
) -> tuple[str, RawSplit, RawSplit, str | None]:
    if source is not None:
        raw = load_local(source, entry.hub_config if entry else None)
    elif entry is not None and entry.hub_id is not None:
        raw = load_hub(entry.hub_id, entry.hub_config)
    elif "/" in name:
        raw = load_hub(name)
    else:
        raise UserError(f"{name!r} is neither a known dataset nor a Hub id", hint="pass --source FILE")
    train, test, note = train_test(raw, seed=seed, test_fraction=test_fraction)
    return raw.origin, train, test, note


def _resolve(
    name: str, map_fn: str | None, source: str | Path | None, options: dict[str, Any]
) -> DatasetEntry | None:
    entry = find_dataset(name)
    if entry is None and map_fn is None:
        get_dataset(name)  # raises, listing the known names
    generated = entry is not None and entry.generator is not None and map_fn is None
    if generated and source is not None:
        raise UserError(f"{name} is generated offline; --source does not apply to it")
    if options and not generated:
        raise UserError(
            f"--{next(iter(options)).replace('_', '-')} applies only to the generated datasets (arith, countdown)"
        )
    return entry


def _map_source(
    name: str,
    entry: DatasetEntry | None,
    map_fn: str | None,
    source: str | Path | None,
    seed: int,
    limit: int | None,
    test_fraction: float,
    progress: bool,
) -> tuple[str, dict[str, list[dict[str, Any]]], dict[str, int], str | None]:
    """Load, split, limit and map raw rows: (origin, rows per split, skipped per split, split note)."""
    if map_fn is not None:
        mapper = _Mapper(load_map_fn(map_fn), f"--map-fn {map_fn}", True)
    else:
        assert entry is not None and entry.map_fn is not None
        mapper = _Mapper(entry.map_fn, entry.name, False)
    origin, train, test, note = _load_raw(name, entry, source, seed, test_fraction)
    rows: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, int] = {}
    for split, raw in (("train", train), ("test", test)):
        raw = raw.take(list(range(min(len(raw), limit or len(raw)))))
        if entry is not None and map_fn is None:
            _check_columns(entry, raw)
        rows[split], skipped[split] = _map_split(split, raw, mapper, progress)
    return origin, rows, skipped, note


def check_split_files(out_dir: Path, *, force: bool) -> None:
    """Refuse an ``out_dir`` that is a file, or that already holds the split files (without ``force``)."""
    for split in ("train", "test"):
        check_new_file(out_dir / f"{split}.parquet", force=force)


def prepare_dataset(
    name: str,
    *,
    out: str | Path | None = None,
    source: str | Path | None = None,
    seed: int = 1,
    limit: int | None = None,
    test_fraction: float = 0.1,
    map_fn: str | None = None,
    options: dict[str, Any] | None = None,
    progress: bool = True,
    force: bool = False,
) -> PrepareResult:
    """Prepare ``out/train.parquet`` and ``out/test.parquet`` for dataset ``name``.

    Args:
        name: A registered dataset (``rlkit.data_prep.DATASETS``); with ``map_fn``, any name (a
            Hub id is loaded from the Hub when no ``source`` is given).
        out: Output folder; default ``data/<name>`` (the last part of a Hub id).
        source: Local file or folder of raw rows instead of the Hub.
        seed: Seed of generated datasets and of the split of sources without one.
        limit: Keep at most this many rows per split.
        test_fraction: Share of rows held out as test when rlkit makes the split.
        map_fn: ``FILE.py:FUNC``, a map function replacing the dataset's own.
        options: Generator options of generated datasets (``size``, ``digits``, ``ops``, ...).
        progress: Show a progress bar while mapping large inputs.
        force: Replace ``train.parquet`` / ``test.parquet`` that ``out`` already holds (nothing
            else in it is touched).

    Raises:
        UserError: Any mistake in the arguments or the data; nothing is written then.
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    entry = _resolve(name, map_fn, source, options)
    out_dir = Path(out) if out is not None else Path("data") / name.rstrip("/").split("/")[-1]
    check_split_files(out_dir, force=force)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    skipped: dict[str, int] = {}
    note: str | None
    if entry is not None and entry.generator is not None and map_fn is None:
        splits, note = _generate(entry, seed, test_fraction, options)
        rows = {split: part[:limit] for split, part in splits.items()}
        origin = "generated"
    else:
        origin, rows, skipped, note = _map_source(
            name, entry, map_fn, source, seed, limit, test_fraction, progress
        )
    if not rows["train"]:
        raise UserError(
            f"{name}: no training rows left to write", hint="check the source and the map function"
        )
    train_table = rows_to_table(rows["train"])
    tables = {"train": train_table, "test": rows_to_table(rows["test"], schema=train_table.schema)}
    files = write_splits(tables, out_dir)
    counts = {split: table.num_rows for split, table in tables.items()}
    return PrepareResult(out_dir, files, counts, origin, note, skipped, rows["train"][0])


def iter_rows(result: PrepareResult) -> Iterable[tuple[str, Any]]:
    """The sample row of a result flattened to ``(column, value)`` pairs, for display."""
    for key, value in result.sample.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                yield f"{key}.{sub}", inner
        else:
            yield key, value
