"""``rlkit download``: offline and Hub failures become one clear line (no real download is made)."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import errors
from typer.testing import CliRunner

import rlkit.data.hub as hub
from rlkit.cli.app import app
from rlkit.errors import UserError

runner = CliRunner()


def _hub_error(cls: type[Exception], message: str) -> Exception:
    """A huggingface_hub exception without an HTTP response (its constructor wants one)."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    return exc


def test_offline_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "model"
    result = runner.invoke(app, ["download", "someone/some-model", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "HF_HUB_OFFLINE is set" in lines[0] and "someone/some-model" in lines[0]
    assert not out.exists()


def test_default_folders() -> None:
    assert hub.default_download_dir("Qwen/Qwen2.5-0.5B", dataset=False) == Path("models/Qwen2.5-0.5B")
    assert hub.default_download_dir("openai/gsm8k", dataset=True) == Path("data/gsm8k")


@pytest.mark.parametrize(
    ("cls", "needles"),
    [
        (errors.GatedRepoError, ("gated", "HF_TOKEN")),
        (errors.RepositoryNotFoundError, ("not found", "add --dataset")),
        (errors.RevisionNotFoundError, ("no revision 'v9'",)),
        (errors.LocalEntryNotFoundError, ("cannot reach",)),
        (errors.HfHubHTTPError, ("refused",)),
    ],
)
def test_hub_errors_are_mapped(
    monkeypatch: pytest.MonkeyPatch, cls: type[Exception], needles: tuple[str, ...]
) -> None:
    import huggingface_hub

    def fail(*args: object, **kwargs: object) -> str:
        raise _hub_error(cls, "hub says no")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(UserError) as err:
        hub.download("o/name", out="unused", revision="v9")
    text = f"{err.value.message} {err.value.hint or ''}"
    for needle in needles:
        assert needle in text, text


def test_unrecognised_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def fail(*args: object, **kwargs: object) -> str:
        raise KeyError("a bug")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(KeyError):
        hub.download("o/name", out="unused")
