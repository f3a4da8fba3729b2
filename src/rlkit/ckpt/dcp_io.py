"""torch.distributed.checkpoint (DCP) without unpickling untrusted objects, and checked before loading.

DCP writes each rank's shards with ``torch.save`` (read back with ``torch.load(weights_only=True)``)
and a ``.metadata`` index with plain ``pickle``; it also pickles any non-tensor value it is given.
rlkit gives DCP tensors only (the rest of a checkpoint is JSON) and reads ``.metadata`` with an
unpickler that constructs nothing but DCP's own metadata records, so loading a checkpoint can
never run code. Before any tensor is read, the metadata is compared with the state the caller
allocated: every key present, same global shape and dtype, shard files inside the folder. A
mismatch is reported as text naming the file (the caller turns it into a UserError).

DCP reshards on load: a state saved by N ranks loads into M ranks (each rank reads the pieces of
its own DTensor shards), or into plain full tensors with no process group at all (merge).
"""

from __future__ import annotations

import errno
import io
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from rlkit.errors import UserError

METADATA_FILE = ".metadata"

# The only globals a DCP ``.metadata`` pickle may name (torch dtypes are allowed separately).
_ALLOWED_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "ChunkStorageMetadata",
            "BytesStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        )
    ),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only DCP metadata classes, ``torch.Size`` and dtypes; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_metadata(dcp_dir: Path) -> Metadata:
    """The DCP index of ``dcp_dir``, unpickled safely.

    Raises:
        UserError: The file is missing, truncated, or names anything but DCP metadata classes.
    """
    path = dcp_dir / METADATA_FILE
    if not path.is_file():
        raise UserError(f"checkpoint file {path} is missing", hint="the checkpoint is damaged or incomplete")
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(io.BytesIO(f.read())).load()
    except Exception as exc:  # unpickling a damaged file raises many types
        raise UserError(f"checkpoint file {path} is damaged or not DCP metadata ({exc})") from exc
    if not isinstance(metadata, Metadata):
        raise UserError(f"checkpoint file {path} does not hold DCP metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with the restricted metadata unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata(Path(self.path))
        storage_meta = getattr(metadata, "storage_meta", None) or StorageMeta()
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata


class _TensorOnlyLoadPlanner(DefaultLoadPlanner):
    """Refuses pickled (non-tensor) entries, which DCP would ``torch.load`` with ``weights_only=False``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        raise UserError(
            f"checkpoint entry {read_item.dest_index.fqn!r} is a pickled object; rlkit loads only tensors"
        )


def flatten(state: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested dicts of tensors -> ``{"a.b.c": tensor}``, the keys DCP stores them under."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, torch.Tensor):
            out[name] = value
        else:
            raise ValueError(f"DCP state must hold only tensors; {name!r} is a {type(value).__name__}")
    return out


def metadata_mismatch(
    metadata: Metadata,
    targets: dict[str, torch.Tensor],
    dcp_dir: Path,
    wanted: set[str] | None = None,
) -> str | None:
    """Why ``targets`` (flat, global shapes) cannot be loaded from ``metadata`` (None when they can).

    ``wanted``: every key some rank loads, where ranks load different keys (pipeline stages,
    expert shards); a stored key is unexpected only when no rank wants it. Default: ``targets``.
    """
    where = dcp_dir / METADATA_FILE
    stored = metadata.state_dict_metadata
    for key, md in stored.items():
        if not isinstance(md, TensorStorageMetadata):
            return f"{where}: entry {key!r} is not a tensor (rlkit writes only tensors)"
    for info in (metadata.storage_data or {}).values():
        rel = Path(str(getattr(info, "relative_path", "")))
        if rel.is_absolute() or len(rel.parts) != 1 or rel.name in ("", ".", ".."):
            return f"{where}: names a shard file outside its folder ({str(rel)!r})"
        if getattr(info, "transform_descriptors", None):
            return f"{where}: shards were written with storage transforms rlkit does not read"
    missing = [k for k in targets if k not in stored]
    extra = [k for k in stored if k not in (targets if wanted is None else wanted)]
    if missing or extra:
        return (
            f"{where}: the checkpoint's tensors do not match this model "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}); "
            "another architecture or LoRA setting?"
        )
    for key, tensor in targets.items():
        md = stored[key]
        assert isinstance(md, TensorStorageMetadata)
        if tuple(md.size) != tuple(tensor.shape):
            return (
                f"{where}: {key} has shape {tuple(md.size)} in the checkpoint but {tuple(tensor.shape)} in "
                "this run's model (another model size?)"
            )
        if md.properties.dtype != tensor.dtype:
            return f"{where}: {key} is {md.properties.dtype} in the checkpoint but {tensor.dtype} in this run"
    return None


def save_state(state: dict[str, Any], dcp_dir: Path) -> None:
    """Write nested dicts of (D)tensors with DCP; collective: every rank calls it with the same folder.

    Raises:
        OSError: ``ENOSPC`` naming ``dcp_dir`` when its file system has less free space than this
            rank's tensors take, checked before writing and again after a failed write (torch's
            own error for a full disk is an opaque ``RuntimeError`` from its zip writer).
    """
    needed = sum(_local_bytes(t) for t in flatten(state).values())  # fails if a value is not a tensor
    dcp_dir.mkdir(parents=True, exist_ok=True)
    _check_space(dcp_dir, needed)
    try:
        dcp_save(state, checkpoint_id=str(dcp_dir))
    except BaseException as exc:  # torch's CheckpointException is a BaseException
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            _check_space(dcp_dir, needed, cause=exc)
        raise


def _local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank writes for ``tensor`` (its local shard for a DTensor)."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def _check_space(folder: Path, needed: int, cause: BaseException | None = None) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``folder`` when its file system has less than ``needed`` bytes free.

    Raises:
        OSError: Not enough free space (chained to ``cause``, the failed write, when given).
    """
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the folder is gone or unreadable: the original error (if any) says more
    if free >= needed:
        return
    message = f"no space left on the device ({free} bytes free, a checkpoint shard needs {needed})"
    raise OSError(errno.ENOSPC, message, str(folder)) from cause


def load_state(state: dict[str, Any], dcp_dir: Path, *, no_dist: bool = False) -> str | None:
    """Fill ``state`` (nested dicts of allocated (D)tensors) in place from ``dcp_dir``.

    Collective unless ``no_dist``. Every rank checks the metadata first and returns the same
    problem text without reading any tensor when it does not match, so no rank is left waiting
    in a collective.

    Returns:
        None on success, else what is wrong (naming the file).
    """
    try:
        metadata = read_metadata(dcp_dir)
    except UserError as exc:
        return exc.message
    targets = flatten(state)
    if no_dist or not dist.is_initialized() or dist.get_world_size() == 1:
        problem = metadata_mismatch(metadata, targets, dcp_dir)
    else:  # ranks may load different keys: check against all of them, and agree on the answer
        keys: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(keys, sorted(targets))
        problems: list[Any] = [None] * dist.get_world_size()
        wanted = {k for rank_keys in keys for k in rank_keys}
        dist.all_gather_object(problems, metadata_mismatch(metadata, targets, dcp_dir, wanted))
        problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        return problem
    _read_shards(state, dcp_dir, no_dist=no_dist)
    return None


def _read_shards(state: dict[str, Any], dcp_dir: Path, *, no_dist: bool) -> None:
    """``dcp_load`` into ``state``; a shard that cannot be read is a UserError naming the folder.

    Shards are read with ``torch.load(weights_only=True)``, so a file that is not a tensor shard
    (damaged, or a pickle put in its place) fails there; torch's message for that advises
    ``weights_only=False``, which rlkit never does, so only its first sentence is kept.

    Raises:
        UserError: A shard file of ``dcp_dir`` is damaged or is not a tensor shard.
    """
    with warnings.catch_warnings():
        # DCP warns that it loads in one process (merge); the weights-only reader about protocols
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            dcp_load(
                state,
                storage_reader=SafeFileSystemReader(str(dcp_dir)),
                planner=_TensorOnlyLoadPlanner(),
                no_dist=no_dist,
            )
        except (KeyboardInterrupt, SystemExit, UserError):
            raise
        except BaseException as exc:  # torch's CheckpointException is a BaseException
            inner = _innermost(exc)
            shards = ", ".join(sorted(p.name for p in dcp_dir.glob("*.distcp"))) or "none"
            first = str(inner).split(". ")[0].strip()[:200]
            cause = f"{type(inner).__name__}: {first}" if first else type(inner).__name__
            raise UserError(
                f"checkpoint shards in {dcp_dir} ({shards}) are damaged or not tensor shards: {cause}",
                hint="resume or merge an older checkpoint of the run (rlkit ckpt ls RUN)",
            ) from exc


def _innermost(exc: BaseException) -> BaseException:
    """The first per-rank failure inside a DCP ``CheckpointException``, else the end of the cause chain."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        item = next(iter(failures.values()))
        inner = item[0] if isinstance(item, tuple) and item else item
        if isinstance(inner, BaseException):
            return _innermost(inner)
    return _innermost(exc.__cause__) if exc.__cause__ is not None else exc


def load_full_tensors(dcp_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor stored under ``prefix`` as one full CPU tensor, without a process group.

    The tensors are allocated from the checkpoint's own metadata (global shape and dtype) and
    the shards of every rank are read into them; names come back without ``prefix``.

    Raises:
        UserError: The metadata is damaged or holds no tensor under ``prefix``, or a shard is damaged.
    """
    metadata = read_metadata(dcp_dir)
    targets: dict[str, torch.Tensor] = {}
    for key, md in metadata.state_dict_metadata.items():
        if key.startswith(prefix) and isinstance(md, TensorStorageMetadata):
            targets[key] = torch.empty(tuple(md.size), dtype=md.properties.dtype)
    if not targets:
        raise UserError(f"checkpoint file {dcp_dir / METADATA_FILE} holds no tensors under {prefix!r}")
    subset = {k: md for k, md in metadata.state_dict_metadata.items() if k in targets}
    problem = metadata_mismatch(
        Metadata(state_dict_metadata=subset, storage_data=metadata.storage_data), targets, dcp_dir
    )
    if problem is not None:
        raise UserError(f"checkpoint is damaged: {problem}")
    _read_shards(targets, dcp_dir, no_dist=True)
    return {k[len(prefix) :]: v for k, v in targets.items()}
