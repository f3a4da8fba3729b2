"""``rlkit generate`` end to end through Typer's CliRunner, on a tiny model saved to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from rlkit.cli.generate import generate
from rlkit.errors import UserError
from rlkit.models import build_tokenizer, load_causal_lm, save_hf
from rlkit.rollout import NativeEngine, SamplingParams

runner = CliRunner()
app = typer.Typer()
app.command()(generate)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = load_causal_lm("builtin:tiny", init="random", seed=3)
    return save_hf(model, tmp_path_factory.mktemp("tiny") / "model", tokenizer=build_tokenizer())


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _run(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_jsonl_prompts_and_chats(model_dir: Path, tmp_path: Path) -> None:
    rows = [
        {"prompt": "What is 2 + 2?"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"prompt": "Count: 1 2 3"},
    ]
    prompts, out = _jsonl(tmp_path / "p.jsonl", rows), tmp_path / "out" / "gen.jsonl"
    args = [
        "--n",
        "2",
        "--temperature",
        "0",
        "--max-tokens",
        "6",
        "--device",
        "cpu",
    ]  # compared with CPU below
    result = _run(model_dir, "--prompts", prompts, "--out", out, *args)
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["prompt"] for g in got] == [rows[0]["prompt"], rows[1]["messages"], rows[2]["prompt"]]
    tokenizer = build_tokenizer()
    chat = tokenizer.apply_chat_template(rows[1]["messages"], tokenize=False, add_generation_prompt=True)
    engine = NativeEngine(load_causal_lm(str(model_dir)), tokenizer=tokenizer)
    expected = engine.generate(
        [tokenizer(chat, add_special_tokens=False)["input_ids"]], SamplingParams(temperature=0, max_tokens=6)
    )
    for g in got:
        assert (
            len(g["responses"]) == len(g["token_ids"]) == len(g["logprobs"]) == len(g["finish_reasons"]) == 2
        )
        assert g["token_ids"][0] == g["token_ids"][1]  # greedy
        assert g["responses"][0] == tokenizer.decode(g["token_ids"][0], skip_special_tokens=True)
        assert all(len(lp) == len(ids) for lp, ids in zip(g["logprobs"], g["token_ids"], strict=True))
    assert got[1]["token_ids"][0] == expected[0][0].token_ids
    assert [p.name for p in out.parent.iterdir()] == ["gen.jsonl"]  # no temporary file left


def test_parquet_prompts_without_chat_template(model_dir: Path, tmp_path: Path) -> None:
    chats = [[{"role": "user", "content": "abc"}], [{"role": "user", "content": "hello"}]]
    pq.write_table(pa.table({"prompt": chats, "data_source": ["x", "y"]}), tmp_path / "test.parquet")
    out = tmp_path / "gen.jsonl"
    args = ["--prompts", tmp_path / "test.parquet", "--out", out, "--no-chat-template", "--max-tokens", "4"]
    args += ["--device", "cpu"]
    result = _run(model_dir, *args, "--seed", "1", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["prompt"] for g in first] == chats and all(len(g["token_ids"][0]) <= 4 for g in first)
    assert _run(model_dir, *args, "--seed", "1", "--force").exit_code == 0  # the rerun replaces --out
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["token_ids"] for g in again] == [g["token_ids"] for g in first]  # same seed, other batching


def test_builtin_tiny_runs(tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    result = _run("builtin:tiny", "--prompts", prompts, "--out", out, "--max-tokens", "3", "--top-k", "5")
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "ok"}', "{not json"], "p.jsonl:2: not valid JSON"),
        (['{"prompt": "ok"}', "", '{"text": "no"}'], "p.jsonl:3: the row has neither"),
        (['{"messages": "hi"}'], "p.jsonl:1: a chat must be"),
        (["[1, 2]"], "p.jsonl:1: expected a JSON object"),
        ([], "holds no prompts"),
    ],
)
def test_bad_prompt_files(model_dir: Path, tmp_path: Path, lines: list[str], message: str) -> None:
    out = tmp_path / "gen.jsonl"
    out.write_text("old\n")
    # --force: even an output the user agreed to replace survives a bad prompts file
    result = _run(model_dir, "--prompts", _jsonl(tmp_path / "p.jsonl", lines), "--out", out, "--force")
    assert isinstance(result.exception, UserError) and message in str(result.exception)
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "gen.jsonl",
        "p.jsonl",
    ]


def test_bad_arguments(model_dir: Path, tmp_path: Path) -> None:
    prompts, out = _jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}]), tmp_path / "gen.jsonl"
    cases = [
        ((model_dir, "--prompts", tmp_path / "missing.jsonl", "--out", out), "no such file"),
        ((tmp_path / "nope", "--prompts", prompts, "--out", out), "no such model folder"),
        ((tmp_path, "--prompts", prompts, "--out", out), "no config.json"),
        ((model_dir, "--prompts", prompts, "--out", out, "--top-p", "0"), "--top-p must be in"),
        ((model_dir, "--prompts", prompts, "--out", out, "--device", "tpu"), "unknown device"),
    ]
    for args, message in cases:
        result = _run(*args)
        assert isinstance(result.exception, UserError), (args, result.output)
        assert message in str(result.exception), str(result.exception)
    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "bad.parquet")
    result = _run(model_dir, "--prompts", tmp_path / "bad.parquet", "--out", out)
    assert isinstance(result.exception, UserError) and "no 'prompt' column" in str(result.exception)
    assert not out.exists()


def test_tokenizer_without_chat_template(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    folder = save_hf(load_causal_lm("builtin:tiny", init="random"), tmp_path / "base", tokenizer=tokenizer)
    prompts, out = _jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}]), tmp_path / "gen.jsonl"
    # a base model's tokenizer has no template: its prompts go in as plain text, with or without the flag
    assert _run(folder, "--prompts", prompts, "--out", out, "--max-tokens", "2").exit_code == 0
    assert (
        _run(
            folder, "--prompts", prompts, "--out", out, "--max-tokens", "2", "--no-chat-template", "--force"
        ).exit_code
        == 0
    )


def test_engine_option_picks_hf_for_other_architectures(tmp_path: Path) -> None:
    from rlkit.models.tiny_foreign import save_tiny_foreign

    folder = save_tiny_foreign("gemma2", tmp_path / "gemma2")
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1="}, {"prompt": "hi"}])
    common = ["--prompts", prompts, "--temperature", "0", "--max-tokens", "4"]
    auto = _run(folder, *common, "--out", tmp_path / "auto.jsonl")
    assert auto.exit_code == 0, auto.output
    explicit = _run(folder, *common, "--out", tmp_path / "hf.jsonl", "--engine", "hf")
    assert explicit.exit_code == 0, explicit.output
    assert (tmp_path / "auto.jsonl").read_text() == (tmp_path / "hf.jsonl").read_text()
    refused = _run(folder, *common, "--out", tmp_path / "native.jsonl", "--engine", "native")
    assert refused.exit_code != 0 and not (tmp_path / "native.jsonl").exists()
    assert isinstance(refused.exception, UserError)
    assert "rollout.engine=native cannot run" in str(refused.exception) and "hf" in str(refused.exception)
