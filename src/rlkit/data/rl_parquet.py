"""verl's RL parquet schema: checking rows, building Arrow tables, writing a split folder atomically.

The five columns (reference/verl.md §5) come first in this order, then any extra columns a map
function adds: ``data_source`` (string), ``prompt`` (list of ``{role, content}`` structs),
``ability`` (string), ``reward_model`` (struct ``{style, ground_truth}``), ``extra_info`` (struct
starting with ``split`` and ``index``). Files are written with pyarrow, so the same rows always
give byte-identical files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rlkit.data_prep._common import RL_COLUMNS
from rlkit.errors import UserError

_SCHEMA_HINT = (
    "a row needs data_source (str), prompt (list of {role, content}), ability (str), "
    "reward_model ({style, ground_truth}) and extra_info (dict), as verl's schema"
)


def check_schema_row(row: Any, where: str) -> None:
    """Raise a UserError naming ``where`` unless ``row`` is a valid schema row."""
    if not isinstance(row, dict):
        raise UserError(
            f"{where}: the map function returned a {type(row).__name__}, not a dict", hint=_SCHEMA_HINT
        )
    missing = [name for name in RL_COLUMNS if name not in row]
    if missing:
        raise UserError(f"{where}: the mapped row has no {', '.join(missing)}", hint=_SCHEMA_HINT)
    problem = _schema_problem(row)
    if problem:
        raise UserError(f"{where}: {problem}", hint=_SCHEMA_HINT)


def _schema_problem(row: dict[str, Any]) -> str | None:
    if not isinstance(row["data_source"], str) or not row["data_source"]:
        return "data_source must be a non-empty string"
    if not isinstance(row["ability"], str):
        return "ability must be a string"
    prompt = row["prompt"]
    if not isinstance(prompt, list) or not prompt:
        return "prompt must be a non-empty list of {role, content} messages"
    for message in prompt:
        if not isinstance(message, dict) or not all(
            isinstance(message.get(k), str) for k in ("role", "content")
        ):
            return f"prompt message {message!r} is not a {{role: str, content: str}} dict"
    reward = row["reward_model"]
    if not isinstance(reward, dict) or "ground_truth" not in reward or "style" not in reward:
        return "reward_model must be a dict with 'style' and 'ground_truth'"
    if not isinstance(row["extra_info"], dict):
        return "extra_info must be a dict"
    return None


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    """Schema rows as an Arrow table (RL columns first); ``schema`` types an empty split.

    Raises:
        UserError: A column holds values of different types in different rows.
    """
    if not rows:
        if schema is None:
            raise ValueError("an empty split needs the schema of the other split")
        return schema.empty_table()
    names: dict[str, None] = dict.fromkeys(RL_COLUMNS)
    for row in rows:
        names.update(dict.fromkeys(row))
    arrays = {}
    for name in names:
        try:
            arrays[name] = pa.array([row.get(name) for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise UserError(
                f"column {name!r} holds values of different types in different rows: {exc}",
                hint="make the map function return the same types for every row",
            ) from exc
    return pa.table(arrays)


def write_splits(tables: dict[str, pa.Table], out: Path) -> list[Path]:
    """Write ``out/<split>.parquet`` for each table, replacing old files only once all are written.

    The files are written into a temporary folder next to ``out`` and moved into place at the end,
    so a failure leaves neither a partial file nor a half-replaced folder behind.

    Raises:
        UserError: ``out`` exists and is not a folder.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the renamed folder should not be
        for split, table in tables.items():
            pq.write_table(table, tmp / f"{split}.parquet")
        if not out.exists():
            os.replace(tmp, out)
        else:
            for split in tables:
                os.replace(tmp / f"{split}.parquet", out / f"{split}.parquet")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / f"{split}.parquet" for split in tables]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_parquet_rows(path: str | os.PathLike[str], required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rows of a parquet file as dicts, after checking that ``required`` columns exist.

    Raises:
        UserError: Missing or unreadable file, or a required column absent (the present ones are listed).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"no such data file: {file}", hint="run `rlkit data NAME` to prepare one")
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{file}: cannot read it as parquet: {exc}") from exc
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise UserError(
            f"{file}: no column {', '.join(repr(m) for m in missing)} "
            f"(columns present: {', '.join(table.column_names)})",
            hint="prepare it with `rlkit data` (verl's schema) or set the data.*_key options",
        )
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows
