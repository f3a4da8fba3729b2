"""Raw rows for ``rlkit data``: local files and folders, or the Hugging Face Hub.

Local files are read directly (not through ``datasets``) so that a bad row can be named by its line
number: ``.jsonl`` (one JSON object per line), ``.json`` (a list of objects, an object of split
name -> list, or JSON lines), ``.parquet``. A folder is a ``datasets`` ``save_to_disk`` folder, a
folder of ``train.*`` / ``test.*`` files, or any folder ``datasets.load_dataset`` reads (e.g. a Hub
snapshot fetched by ``rlkit download REPO --dataset``). Every failure is a :class:`UserError`.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlkit.errors import UserError

_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
_OFFLINE_HINT = "pass --source FILE (.jsonl/.json/.parquet) or a dataset folder"


@dataclass
class RawSplit:
    """Rows of one split, each with where it came from (for error messages)."""

    label: str
    """The file or split the rows came from, e.g. ``gsm8k.jsonl`` or ``split 'train' of openai/gsm8k``."""
    rows: list[dict[str, Any]]
    locations: list[int]
    """1-based line (``unit == "line"``) or row number of each row in its origin."""
    unit: str = "row"

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        """Where row ``i`` came from, e.g. ``line 7 of gsm8k.jsonl``."""
        return f"{self.unit} {self.locations[i]} of {self.label}"

    def take(self, positions: list[int]) -> RawSplit:
        """The rows at ``positions``, keeping their origins."""
        return RawSplit(
            self.label, [self.rows[i] for i in positions], [self.locations[i] for i in positions], self.unit
        )

    def columns(self) -> list[str]:
        """Every column that some row has, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)


@dataclass
class RawSource:
    """Raw rows by split name (``all`` when the source has no splits of its own)."""

    origin: str
    splits: dict[str, RawSplit]


def _row_split(label: str, rows: list[dict[str, Any]]) -> RawSplit:
    return RawSplit(label, rows, list(range(1, len(rows) + 1)))


def _read_jsonl(path: Path, text: str) -> RawSplit:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}: line {number} is not valid JSON ({exc.msg} at column {exc.colno})",
                hint="each line of a .jsonl file must be one JSON object",
            ) from exc
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {number} is a JSON {type(row).__name__}, not an object")
        rows.append(row)
        lines.append(number)
    return RawSplit(path.name, rows, lines, unit="line")


def _read_json(path: Path, text: str) -> dict[str, RawSplit]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {"all": _read_jsonl(path, text)}  # `datasets` also reads JSON lines from .json files
    if isinstance(data, list):
        parts = {"all": data}
    elif isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        parts = data
    else:
        raise UserError(f"{path}: expected a list of objects or an object of split name -> list of objects")
    out: dict[str, RawSplit] = {}
    for split, rows in parts.items():
        bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
        if bad is not None:
            raise UserError(f"{path}: item {bad + 1} of {split!r} is not a JSON object")
        out[split] = _row_split(path.name if split == "all" else f"split {split!r} of {path.name}", rows)
    return out


def _read_parquet(path: Path) -> RawSplit:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: cannot read it as parquet: {exc}") from exc
    return _row_split(path.name, rows)


def read_file(path: Path) -> dict[str, RawSplit]:
    """The rows of one local file by split (``all`` unless a .json file names its splits).

    Raises:
        UserError: Unknown suffix, unreadable file, or a line that is not a JSON object.
    """
    if path.suffix not in _FILE_SUFFIXES:
        raise UserError(
            f"{path}: unsupported file type {path.suffix!r}", hint="use .jsonl, .json or .parquet"
        )
    if path.suffix == ".parquet":
        return {"all": _read_parquet(path)}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as UTF-8 text: {exc}") from exc
    if path.suffix == ".jsonl":
        return {"all": _read_jsonl(path, text)}
    return _read_json(path, text)


def _from_datasets(origin: str, loaded: Any) -> RawSource:
    """A ``datasets`` Dataset or DatasetDict as a RawSource."""
    if hasattr(loaded, "keys"):
        splits = {name: _row_split(f"split {name!r} of {origin}", loaded[name].to_list()) for name in loaded}
        return RawSource(origin, splits)
    return RawSource(origin, {"all": _row_split(origin, loaded.to_list())})


def _split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for split in ("train", "test", "validation"):
        for suffix in _FILE_SUFFIXES:
            if (folder / f"{split}{suffix}").is_file():
                found[split] = folder / f"{split}{suffix}"
                break
    return found


def _load_folder(folder: Path, config: str | None) -> RawSource:
    import datasets

    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        try:
            return _from_datasets(str(folder), datasets.load_from_disk(str(folder)))
        except (OSError, ValueError) as exc:
            raise UserError(f"{folder}: cannot load the saved dataset: {exc}") from exc
    files = _split_files(folder)
    if "train" in files and not (folder / "README.md").is_file():
        splits = {name: read_file(path)["all"] for name, path in files.items()}
        return RawSource(str(folder), splits)
    try:
        if config and (folder / config).is_dir():
            try:
                return _from_datasets(str(folder), datasets.load_dataset(str(folder), config))
            except ValueError:
                pass  # no README declaring the config: let datasets infer the splits from file names
        return _from_datasets(str(folder), datasets.load_dataset(str(folder)))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{folder}: not a dataset folder datasets can read: {exc}",
            hint="pass a .jsonl/.json/.parquet file, a save_to_disk folder, or a folder with train.* files",
        ) from exc


def load_local(path: str | os.PathLike[str], config: str | None = None) -> RawSource:
    """Raw rows from a local file or folder (``--source``).

    Args:
        path: A .jsonl/.json/.parquet file, or a dataset folder (see the module docstring).
        config: The dataset's Hub config, used when the folder holds a Hub snapshot with config folders.

    Raises:
        UserError: Missing path, unreadable content, or no rows at all.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise UserError(f"--source {source}: no such file or folder")
    if source.is_dir():
        raw = _load_folder(source, config)
    else:
        raw = RawSource(str(source), read_file(source))
    if not any(len(split) for split in raw.splits.values()):
        raise UserError(f"{source} is empty: it has no rows", hint="check the file, or pass another --source")
    return raw


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value, read now (not at import)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def load_hub(hub_id: str, config: str | None = None) -> RawSource:
    """Raw rows of a Hub dataset through ``datasets.load_dataset`` (which caches the download).

    Raises:
        UserError: Offline, the Hub cannot be reached, or the dataset does not exist.
    """
    if is_offline():
        raise UserError(
            f"cannot fetch {hub_id} from the Hugging Face Hub: HF_HUB_OFFLINE is set", hint=_OFFLINE_HINT
        )
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        loaded = datasets.load_dataset(hub_id, config)
    except DatasetNotFoundError as exc:
        raise UserError(f"dataset {hub_id!r} not found on the Hugging Face Hub: {exc}") from exc
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise UserError(
            f"cannot fetch {hub_id} from the Hugging Face Hub (no network?): {exc}", hint=_OFFLINE_HINT
        ) from exc
    return _from_datasets(hub_id, loaded)


def train_test(raw: RawSource, *, seed: int, test_fraction: float) -> tuple[RawSplit, RawSplit, str | None]:
    """The train and test rows of a source, and a note when they were split here.

    A source with a ``train`` split and a ``test`` (or ``validation``) split keeps them. Any other
    source is pooled and split deterministically: ``round(n * test_fraction)`` rows chosen by a
    ``random.Random(seed)`` shuffle go to test; both halves keep the source order.

    Raises:
        UserError: ``test_fraction`` outside [0, 1), or nothing left for training.
    """
    held_out = raw.splits.get("test", raw.splits.get("validation"))
    if "train" in raw.splits and held_out is not None:
        return raw.splits["train"], held_out, None
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    pooled = _pool(raw)
    n = len(pooled)
    n_test = round(n * test_fraction)
    if n - n_test < 1:
        raise UserError(
            f"{raw.origin}: {n} rows leave none for training with --test-fraction {test_fraction}"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test_pos, train_pos = sorted(order[:n_test]), sorted(order[n_test:])
    note = (
        f"{raw.origin} has no train/test split of its own: split its {n} rows into "
        f"{n - n_test} train / {n_test} test with --seed {seed} (--test-fraction {test_fraction})"
    )
    return pooled.take(train_pos), pooled.take(test_pos), note


def _pool(raw: RawSource) -> RawSplit:
    parts = list(raw.splits.values())
    if len(parts) == 1:
        return parts[0]
    rows = [row for part in parts for row in part.rows]
    return _row_split(raw.origin, rows)
