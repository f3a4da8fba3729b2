"""A checkpoint write that cannot fit says "no space left" and names the folder (issue 19, finding 12).

torch's own error for a full disk is an opaque ``RuntimeError`` from its zip writer; rlkit checks the
file system's real free space (``shutil.disk_usage``) before writing and after a failed write. The
tensor here claims more bytes than any disk has (a stride-0 view: no memory behind it), so the
check refuses it on the real file system of ``tmp_path``, before anything is written.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch

from rlkit.ckpt.dcp_io import save_state
from rlkit.controller.causes import describe


def test_a_shard_larger_than_the_free_space_is_refused_naming_the_folder(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    huge = torch.zeros(1).expand(free // 4 + 1)  # claims more than `free` bytes, allocates 4
    dcp_dir = tmp_path / "step_1.tmp" / "actor" / "dcp"
    with pytest.raises(OSError) as info:
        save_state({"w": huge}, dcp_dir)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(dcp_dir)
    assert list(dcp_dir.iterdir()) == []  # refused before writing
    assert describe(info.value) == f"no space left on the device: {dcp_dir} (OSError errno 28)"


def test_a_shard_that_fits_is_written(tmp_path: Path) -> None:
    save_state({"w": torch.arange(6.0)}, tmp_path / "dcp")
    assert (tmp_path / "dcp" / ".metadata").is_file()
