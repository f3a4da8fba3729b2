"""Checkpoint I/O failures as one line with their cause (issue 19, finding 12).

A write that cannot fit says "no space left" and names the folder; a shard that is not a tensor
shard (a pickle put in its place) is refused naming the folder, and nothing in it runs.

torch's own error for a full disk is an opaque ``RuntimeError`` from its zip writer; rlkit checks the
file system's real free space (``shutil.disk_usage``) before writing and after a failed write. The
tensor below claims more bytes than any disk has (a stride-0 view: no memory behind it), so the
check refuses it on the real file system of ``tmp_path``, before anything is written.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from rlkit.ckpt.dcp_io import load_full_tensors, load_state, save_state
from rlkit.controller.causes import describe
from rlkit.errors import UserError


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


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_in_place_of_a_shard_is_refused_and_never_run(tmp_path: Path) -> None:
    dcp_dir = tmp_path / "dcp"
    save_state({"w": torch.arange(6.0)}, dcp_dir)
    (shard,) = dcp_dir.glob("*.distcp")
    marker = tmp_path / "ran"
    shard.write_bytes(pickle.dumps(_RunsCode(marker)))
    for attempt in (
        lambda: load_state({"w": torch.empty(6)}, dcp_dir, no_dist=True),  # resume, in a worker
        lambda: load_full_tensors(dcp_dir, ""),  # merge
    ):
        with pytest.raises(UserError) as info:
            attempt()
        assert (
            f"checkpoint shards in {dcp_dir} ({shard.name}) are damaged or not tensor shards"
            in info.value.message
        )
        assert "weights_only" not in info.value.message  # torch's advice to unpickle anyway is dropped
    assert not marker.exists()
