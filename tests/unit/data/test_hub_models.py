"""Hub ids as model paths: read from a Hugging Face cache built in tmp_path, never from the network.

The cache is laid out as huggingface_hub lays it out (``models--ORG--NAME/refs/main`` naming a
commit, ``snapshots/<commit>/`` holding the files), written in-process from a tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.data.hub import is_hub_id, resolve_model_path
from rlkit.errors import UserError
from rlkit.models import (
    build_tokenizer,
    load_causal_lm,
    load_hf_config,
    load_tokenizer,
    model_config,
    save_hf,
)

REPO = "tiny-org/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
runner = CliRunner()


def _cache_snapshot(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in the cache at ``cache``, with refs/main pointing to it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face cache holding REPO: a random tiny model with the built-in tokenizer."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    model = load_causal_lm("builtin:tiny", init="random", seed=5)
    save_hf(model, _cache_snapshot(cache, REPO), tokenizer=build_tokenizer())
    return cache


@pytest.fixture
def offline(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def test_what_counts_as_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_hub_id("Qwen/Qwen2.5-0.5B-Instruct") and is_hub_id("org/name.v1_2")
    for local in ("builtin:tiny", "./org/name", "/abs/org", "~/org/name", "gpt2", "a/b/c", "org/"):
        assert not is_hub_id(local), local
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("org/name")  # an existing relative folder wins, as in transformers
    assert resolve_model_path("org/name") == "org/name"


def test_hub_id_loads_from_the_cache_offline(offline: Path) -> None:
    snapshot = offline / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert resolve_model_path(REPO) == str(snapshot)
    assert load_hf_config(REPO) == json.loads((snapshot / "config.json").read_text())
    assert model_config(REPO) == model_config(snapshot)
    model = load_causal_lm(REPO)
    want = load_causal_lm(snapshot)
    for (name, got), ref in zip(model.state_dict().items(), want.state_dict().values(), strict=True):
        assert torch.equal(got, ref), name
    tokenizer = load_tokenizer(REPO)
    assert tokenizer.decode(tokenizer.encode("2 + 3 = 5")) == "2 + 3 = 5"


def test_offline_and_not_cached_is_one_line_naming_the_fix(offline: Path) -> None:
    with pytest.raises(UserError) as err:
        load_hf_config("someone/not-cached")
    text = str(err.value)
    assert text.startswith("model.path: HF_HUB_OFFLINE is set and model someone/not-cached")
    assert "rlkit download someone/not-cached" in text and "unset HF_HUB_OFFLINE" in text
    with pytest.raises(UserError, match="tokenizer: HF_HUB_OFFLINE"):
        load_tokenizer("someone/not-cached")


def test_a_missing_local_folder_is_still_named_as_such(offline: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder"):
        load_hf_config(tmp_path / "nope")


def test_unreachable_hub_is_one_line(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online but the endpoint refuses connections (a closed loopback port: no network is used)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert resolve_model_path(REPO).endswith(COMMIT)  # cached: no request is made at all
    with pytest.raises(UserError, match=r"critic.model_path: cannot reach http://127.0.0.1:9"):
        resolve_model_path("someone/not-cached", key="critic.model_path")


def test_generate_takes_a_hub_id(offline: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "1 + 1 ="}) + "\n")
    out = tmp_path / "gen.jsonl"
    args = ["generate", REPO, "--prompts", str(prompts), "--out", str(out), "--max-tokens", "3"]
    result = runner.invoke(app, [*args, "--temperature", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 1
    missing = runner.invoke(app, ["generate", "someone/not-cached", "--prompts", str(prompts), "--out", "x"])
    assert missing.exit_code == 2
    lines = [line for line in missing.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "someone/not-cached" in lines[0] and "Traceback" not in missing.output
