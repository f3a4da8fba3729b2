"""Local BM25 retrieval over a user corpus (jsonl, parquet, txt); skipped where bm25s is absent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rlkit.agents.tools.registry import load_tools
from rlkit.errors import UserError

pytest.importorskip("bm25s")

from rlkit.agents.tools.retrieval import RetrievalTool  # noqa: E402

DOCS = [
    {"title": "Paris", "text": "Paris is the capital and largest city of France."},
    {"title": "Berlin", "text": "Berlin is the capital of Germany, on the river Spree."},
    {"title": "Photosynthesis", "text": "Plants turn light, water and carbon dioxide into sugar."},
]


def _corpus(tmp_path: Path, suffix: str) -> Path:
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    elif suffix == ".txt":
        path.write_text("\n".join(d["text"] for d in DOCS) + "\n\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(DOCS), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".txt"])
def test_finds_the_right_document(tmp_path: Path, suffix: str) -> None:
    tool = RetrievalTool(corpus=str(_corpus(tmp_path, suffix)), top_k=2)
    text = asyncio.run(tool.execute("t", {"query": "capital of Germany"})).text
    assert text.splitlines()[0].startswith("Doc 1") and "Germany" in text.splitlines()[0]
    assert "no documents match" in asyncio.run(tool.execute("t", {"query": "zzzz qqqq"})).text


def test_verl_query_list_layout_from_yaml(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, ".jsonl")
    config = tmp_path / "tools.yaml"
    config.write_text(f"""
tools:
  - class_name: retrieval
    config: {{corpus: "{corpus}", top_k: 1, max_doc_chars: 20, type: native}}
    tool_schema:
      type: function
      function:
        name: search
        description: Searches the corpus.
        parameters:
          type: object
          properties:
            query_list: {{type: array, items: {{type: string}}, description: queries}}
          required: [query_list]
""")
    tool = load_tools([str(config)])["search"]
    result = asyncio.run(tool.execute("t", {"query_list": ["France", "sugar plants"]}))
    first, second = result.text.split("\n\n")
    assert first == "Doc 1 (Title: Paris): Paris is the capital..." and "Photosynthesis" in second


def test_corpus_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        RetrievalTool(corpus=str(tmp_path / "none.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(UserError, match="row 0 has no string 'text'"):
        RetrievalTool(corpus=str(bad))
    with pytest.raises(UserError, match="unknown format"):
        RetrievalTool(corpus=str(bad.rename(tmp_path / "bad.csv")))
