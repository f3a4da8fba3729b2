"""``rlkit data``: sources, verl's exact parquet schema, determinism, and error paths that leave nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.data.prepare import prepare_dataset
from rlkit.data_prep import gsm8k
from rlkit.errors import UserError

runner = CliRunner()
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _gsm8k_rows(n: int) -> list[dict[str, str]]:
    return [
        {"question": f"Tom has {i} apples. How many?", "answer": f"He has {i}.\n#### {i},000"}
        for i in range(n)
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _invoke(*args: str | Path):
    return runner.invoke(app, ["data", *map(str, args)])


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_gsm8k_from_jsonl_has_verls_exact_schema(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "gsm8k.jsonl", _gsm8k_rows(20))
    out = tmp_path / "out"
    result = _invoke("gsm8k", "--source", source, "--out", out, "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "no train/test split of its own" in result.output and "18 train / 2 test" in result.output
    train, test = pq.read_table(out / "train.parquet"), pq.read_table(out / "test.parquet")
    assert train.num_rows == 18 and test.num_rows == 2
    expected = pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", MESSAGES),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
            (
                "extra_info",
                pa.struct(
                    [
                        ("split", pa.string()),
                        ("index", pa.int64()),
                        ("answer", pa.string()),
                        ("question", pa.string()),
                    ]
                ),
            ),
        ]
    )
    assert train.schema.equals(expected) and test.schema.equals(expected)
    rows = train.to_pylist() + test.to_pylist()
    by_question = {row["extra_info"]["question"]: row for row in rows}
    assert len(by_question) == 20
    row = by_question["Tom has 7 apples. How many?"]
    assert row["reward_model"]["ground_truth"] == "7000"
    assert row["prompt"][0]["content"].endswith(gsm8k.INSTRUCTION)
    assert [r["extra_info"]["index"] for r in test.to_pylist()] == [0, 1]
    assert {r["extra_info"]["split"] for r in test.to_pylist()} == {"test"}


def test_source_folder_keeps_its_own_splits_and_limit(tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", _gsm8k_rows(6))
    _write_jsonl(folder / "test.jsonl", _gsm8k_rows(3))
    out = tmp_path / "out"
    result = _invoke("gsm8k", "--source", folder, "--out", out, "--limit", "4")
    assert result.exit_code == 0, result.output
    assert "split of its own" not in result.output
    assert pq.read_table(out / "train.parquet").num_rows == 4
    assert pq.read_table(out / "test.parquet").num_rows == 3


def test_math_from_parquet_and_hh_rlhf_from_json(tmp_path: Path) -> None:
    math_rows = [
        {"problem": f"{i}+1?", "solution": f"$\\boxed{{{i + 1}}}$", "level": "Level 1"} for i in range(10)
    ]
    pq.write_table(pa.Table.from_pylist(math_rows), tmp_path / "math.parquet")
    result = _invoke(
        "math", "--source", tmp_path / "math.parquet", "--out", tmp_path / "m", "--test-fraction", "0.2"
    )
    assert result.exit_code == 0, result.output
    truths = [
        r["reward_model"]["ground_truth"] for r in pq.read_table(tmp_path / "m" / "train.parquet").to_pylist()
    ]
    assert len(truths) == 8 and set(truths) <= {str(i + 1) for i in range(10)}

    pair = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    odd = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}
    (tmp_path / "hh.json").write_text(json.dumps({"train": [pair, pair, odd], "test": [pair]}))
    result = _invoke("hh_rlhf", "--source", tmp_path / "hh.json", "--out", tmp_path / "hh")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "hh" / "train.parquet")
    assert table.num_rows == 2 and table.schema.field("prompt").type == MESSAGES
    assert table.to_pylist()[0]["extra_info"]["rejected"] == "go away"


def test_saved_datasets_folder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = _gsm8k_rows(5)
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])}
    ).save_to_disk(str(tmp_path / "saved"))
    result = prepare_dataset("gsm8k", source=tmp_path / "saved", out=tmp_path / "out", progress=False)
    assert result.counts == {"train": 5, "test": 2} and result.note is None


def test_user_map_fn(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "raw.jsonl", [{"q": f"{i}?", "a": i} for i in range(10)])
    (tmp_path / "prep.py").write_text(
        "def to_row(row, index):\n"
        "    return {'data_source': 'mine', 'prompt': [{'role': 'user', 'content': row['q']}],\n"
        "            'ability': 'qa', 'reward_model': {'style': 'rule', 'ground_truth': str(row['a'])},\n"
        "            'extra_info': {'tag': 'x'}} if row['a'] != 3 else None\n"
    )
    out = tmp_path / "mine"
    result = _invoke("mine", "--source", source, "--map-fn", f"{tmp_path / 'prep.py'}:to_row", "--out", out)
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "train.parquet").to_pylist() + pq.read_table(out / "test.parquet").to_pylist()
    assert len(rows) == 9 and {r["data_source"] for r in rows} == {"mine"}
    assert all(set(r["extra_info"]) == {"tag", "split", "index"} for r in rows)


def test_generated_datasets_are_byte_identical_per_seed(tmp_path: Path) -> None:
    for name, extra in (("arith", ["--digits", "3", "--ops", "+-*"]), ("countdown", ["--numbers", "3-4"])):
        for run, seed in (("a", "5"), ("b", "5"), ("c", "6")):
            result = _invoke(
                name, "--size", "120", "--seed", seed, "--out", tmp_path / f"{name}{run}", *extra
            )
            assert result.exit_code == 0, result.output
        for split in ("train", "test"):
            a, b, c = ((tmp_path / f"{name}{run}" / f"{split}.parquet").read_bytes() for run in "abc")
            assert a == b and a != c
        assert pq.read_table(tmp_path / f"{name}a" / "test.parquet").num_rows == 12


def test_existing_output_replaced_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _invoke("arith", "--size", "50", "--seed", "1", "--out", out).exit_code == 0
    before = (out / "train.parquet").read_bytes()
    (out / "notes.txt").write_text("mine")
    # never replaced unasked
    _assert_one_line_error(_invoke("arith", "--size", "50", "--out", out), "already exists", "--force")
    assert (out / "train.parquet").read_bytes() == before
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no marker"}])
    _assert_one_line_error(_invoke("gsm8k", "--source", bad, "--out", out, "--force"), "####")
    assert (out / "train.parquet").read_bytes() == before and _leftovers(tmp_path) == []
    assert _invoke("arith", "--size", "50", "--seed", "2", "--out", out, "--force").exit_code == 0
    assert (out / "train.parquet").read_bytes() != before and _leftovers(tmp_path) == []
    assert (out / "notes.txt").read_text() == "mine"  # only the split files are replaced


def _error_cases(tmp_path: Path) -> dict[str, tuple[list[str | Path], tuple[str, ...]]]:
    missing = _write_jsonl(tmp_path / "missing.jsonl", [{"question": "q"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answer": "#### 1"}\n\n{"question": "b", "answer": \n')
    unparsable = _write_jsonl(
        tmp_path / "nomarker.jsonl", [_gsm8k_rows(1)[0], {"question": "q", "answer": "four"}]
    )
    good = _write_jsonl(tmp_path / "good.jsonl", _gsm8k_rows(4))
    (tmp_path / "maps.py").write_text(
        "def boom(row):\n    raise RuntimeError('kaput')\n\ndef partial(row):\n    return {'data_source': 'x'}\n"
    )
    maps = tmp_path / "maps.py"
    return {
        "missing column": (["gsm8k", "--source", missing], ("'answer'", "columns present: question")),
        "empty file": (["gsm8k", "--source", empty], ("empty",)),
        "bad json line": (["gsm8k", "--source", broken], ("line 3", "not valid JSON")),
        "unparsable ground truth": (["gsm8k", "--source", unparsable], ("line 2", "####")),
        "unknown dataset": (["gsm8kk"], ("unknown dataset", "did you mean gsm8k")),
        "map-fn without colon": (["x", "--source", good, "--map-fn", "prep.py"], ("FILE.py:FUNCTION",)),
        "map-fn missing file": (["x", "--source", good, "--map-fn", "nope.py:f"], ("no such Python file",)),
        "map-fn missing function": (
            ["x", "--source", good, "--map-fn", f"{maps}:nope"],
            ("no function 'nope'",),
        ),
        "map-fn raises": (
            ["x", "--source", good, "--map-fn", f"{maps}:boom"],
            ("RuntimeError: kaput", "line 1"),
        ),
        "map-fn bad row": (["x", "--source", good, "--map-fn", f"{maps}:partial"], ("no prompt",)),
        "generator option on hub data": (["gsm8k", "--source", good, "--digits", "3"], ("--digits",)),
        "source for generated data": (["arith", "--source", good], ("generated offline",)),
        "bad test fraction": (["gsm8k", "--source", good, "--test-fraction", "1.5"], ("--test-fraction",)),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing column",
        "empty file",
        "bad json line",
        "unparsable ground truth",
        "unknown dataset",
        "map-fn without colon",
        "map-fn missing file",
        "map-fn missing function",
        "map-fn raises",
        "map-fn bad row",
        "generator option on hub data",
        "source for generated data",
        "bad test fraction",
    ],
)
def test_errors_are_one_line_and_leave_no_output(tmp_path: Path, case: str) -> None:
    args, needles = _error_cases(tmp_path)[case]
    out = tmp_path / "out"
    _assert_one_line_error(_invoke(*args, "--out", out), *needles)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_offline_hub_without_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = _invoke("gsm8k", "--out", tmp_path / "out")
    _assert_one_line_error(result, "HF_HUB_OFFLINE", "--source")
    assert not (tmp_path / "out").exists()


def test_prepare_dataset_in_process_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--limit"):
        prepare_dataset("arith", out=tmp_path / "o", limit=0)
    with pytest.raises(UserError, match="no option"):
        prepare_dataset("countdown", out=tmp_path / "o", options={"digits": 3})
    assert not (tmp_path / "o").exists()


def test_listing_datasets() -> None:
    result = runner.invoke(app, ["data"])
    assert result.exit_code == 0
    for name in ("gsm8k", "math", "countdown", "arith", "hh_rlhf"):
        assert name in result.output


def test_hub_snapshot_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder as `rlkit download openai/gsm8k --dataset` leaves it (config folder, sharded parquet)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    snapshot = tmp_path / "gsm8k"
    (snapshot / "main").mkdir(parents=True)
    rows = _gsm8k_rows(6)
    pq.write_table(pa.Table.from_pylist(rows), snapshot / "main" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), snapshot / "main" / "test-00000-of-00001.parquet")
    result = prepare_dataset("gsm8k", source=snapshot, out=tmp_path / "out", progress=False)
    assert result.counts == {"train": 6, "test": 2} and result.note is None
