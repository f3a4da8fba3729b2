"""Checksums in the manifest: a changed byte is caught on resume and merge; old checkpoints still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkit.ckpt import merge_checkpoint, read_resume_point, resolve_resume, verify_checkpoint
from rlkit.ckpt.layout import file_checksum
from rlkit.errors import UserError

from .conftest import write_checkpoint

pytestmark = pytest.mark.usefixtures("process_group")


@pytest.fixture
def run(actor: object, tmp_path: Path) -> Path:
    for step in (1, 2):
        write_checkpoint(tmp_path / "run", step, {"actor": actor})
    return tmp_path / "run"


def corrupt(path: Path, offset: int, size: int = 4096) -> None:
    """Overwrite ``size`` bytes at ``offset`` with other bytes, keeping the file's size."""
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = bytes((b + 1) % 256 for b in data[offset : offset + size])
    path.write_bytes(bytes(data))


def test_manifest_holds_a_checksum_per_file(run: Path) -> None:
    folder = run / "checkpoints" / "step_2"
    manifest = verify_checkpoint(folder)
    assert manifest["checksum"] == "crc32" and manifest["checksums"].keys() == manifest["files"].keys()
    shard = "actor/dcp/__0_0.distcp"
    assert manifest["checksums"][shard] == file_checksum(folder / shard)


def test_4kb_changed_inside_a_shard_is_caught_on_resume_and_merge(run: Path, tmp_path: Path) -> None:
    folder = run / "checkpoints" / "step_2"
    shard = folder / "actor" / "dcp" / "__0_0.distcp"
    size = shard.stat().st_size
    corrupt(shard, size // 2)
    assert shard.stat().st_size == size
    for attempt in (lambda: resolve_resume("auto", run), lambda: merge_checkpoint(folder, tmp_path / "hf")):
        with pytest.raises(UserError, match=r"__0_0\.distcp does not match its checksum") as err:
            attempt()
        assert f"trainer.resume={run.resolve() / 'checkpoints' / 'step_1'}" in str(err.value.hint)
        assert f"rlkit ckpt merge {run.resolve() / 'checkpoints' / 'step_1'}" in str(err.value.hint)
    assert not (tmp_path / "hf").exists()


def test_checkpoint_without_checksums_still_loads_and_says_so(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = run / "checkpoints" / "step_2"
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["checksums"], manifest["checksum"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    point = read_resume_point(folder)
    assert point.step == 2
    assert "has no checksums (written by an older rlkit)" in capsys.readouterr().err
