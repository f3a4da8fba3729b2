"""Local retrieval: BM25 search over a corpus the user gives (``bm25s``, the ``rlkit[tools]`` extra).

The corpus is a ``.jsonl`` file (one JSON object per line with the text under ``text_key``, and an
optional ``title``), a ``.parquet`` file (the same columns) or a ``.txt`` file (one document per
non-empty line). It is indexed once, when the tool is built; a query returns the ``top_k`` best
documents, each cut to ``max_doc_chars``. The model calls ``search(query)``; a ``tool_schema``
whose parameter is verl's ``query_list`` (an array of queries) is accepted too.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rlkit.agents.tools.base import ToolResult
from rlkit.agents.tools.function import StatefulTool
from rlkit.errors import UserError

INSTALL_HINT = "pip install 'rlkit[tools]' (or: pip install bm25s)"


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:
        raise UserError(
            "the retrieval tool needs the bm25s package, which is not installed", hint=INSTALL_HINT
        ) from exc
    return bm25s


def read_corpus(path: str | Path, text_key: str = "text") -> list[dict[str, str]]:
    """The documents of a ``.jsonl`` / ``.parquet`` / ``.txt`` corpus as ``{"text", "title"}`` dicts.

    Raises:
        UserError: a missing file, an unknown suffix, a row without ``text_key``, or no documents.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"retrieval corpus {str(path)!r} does not exist", hint="set the tool's config: corpus: PATH"
        )
    if path.suffix == ".txt":
        docs = [{"text": line.strip(), "title": ""} for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix in (".jsonl", ".parquet"):
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        missing = next((i for i, row in enumerate(rows) if not isinstance(row.get(text_key), str)), None)
        if missing is not None:
            raise UserError(
                f"retrieval corpus {str(path)!r}: row {missing} has no string {text_key!r}",
                hint="set the tool's config: text_key: COLUMN",
            )
        docs = [{"text": row[text_key], "title": str(row.get("title") or "")} for row in rows]
    else:
        raise UserError(
            f"retrieval corpus {str(path)!r}: unknown format {path.suffix!r}",
            hint="use .jsonl, .parquet or .txt",
        )
    if not docs:
        raise UserError(f"retrieval corpus {str(path)!r} has no documents")
    return docs


class BM25Index:
    """A BM25 index over documents (English stop words removed, lower-cased word tokens)."""

    def __init__(self, docs: list[dict[str, str]]) -> None:
        bm25s = _bm25s()
        self.docs = docs
        self._bm25s = bm25s
        self._model = bm25s.BM25()
        tokens = bm25s.tokenize(
            [f"{d['title']} {d['text']}" for d in docs], stopwords="en", show_progress=False
        )
        self._model.index(tokens, show_progress=False)
        self._vocab = set(tokens.vocab)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best ``(document index, score)`` pairs with a positive score, best first."""
        words = [
            w
            for w in self._bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
            if w in self._vocab
        ]
        if not words:
            return []
        k = min(k, len(self.docs))
        ids, scores = self._model.retrieve([words], k=k, show_progress=False, n_threads=1)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]


class RetrievalTool(StatefulTool):
    """The ``retrieval`` tool: ``search(query)`` -> the best passages of a local corpus.

    Args:
        corpus: Path of the ``.jsonl`` / ``.parquet`` / ``.txt`` corpus.
        text_key: Column or key of each document's text (jsonl / parquet).
        top_k: Documents returned per query.
        max_doc_chars: Characters kept of each returned document.
        schema: Overrides the default schema (e.g. verl's ``query_list`` layout).
    """

    name = "search"

    def __init__(
        self,
        corpus: str,
        text_key: str = "text",
        top_k: int = 3,
        max_doc_chars: int = 500,
        schema: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            schema=schema
            or {
                "type": "function",
                "function": {
                    "name": "search",
                    "description": "search the documents",
                    "parameters": {
                        "type": "object",
                        "properties": {"query": {"type": "string", "description": "what to look for"}},
                        "required": ["query"],
                    },
                },
            }
        )
        self.index = BM25Index(read_corpus(corpus, text_key))
        self.top_k, self.max_doc_chars = top_k, max_doc_chars

    def answer(self, query: str) -> str:
        """The formatted hits of one query (``Doc 1 (Title: ...): text``)."""
        hits = self.index.search(query, self.top_k)
        if not hits:
            return f"no documents match {query!r}"
        lines = []
        for rank, (doc_id, _) in enumerate(hits, start=1):
            doc = self.index.docs[doc_id]
            text = (
                doc["text"]
                if len(doc["text"]) <= self.max_doc_chars
                else doc["text"][: self.max_doc_chars] + "..."
            )
            title = f" (Title: {doc['title']})" if doc["title"] else ""
            lines.append(f"Doc {rank}{title}: {text}")
        return "\n".join(lines)

    async def call(self, state: Any, arguments: dict[str, Any]) -> ToolResult:
        """Search for the query (or each of verl's ``query_list``) in a worker thread."""
        queries = arguments.get("query_list")
        if queries is None:
            queries = [next(iter(arguments.values()), "")]
        texts = await asyncio.to_thread(lambda: [self.answer(str(q)) for q in queries])
        return ToolResult(text="\n\n".join(texts), metrics={"retrieval_queries": float(len(queries))})
