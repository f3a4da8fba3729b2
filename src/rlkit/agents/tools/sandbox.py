"""Run model-written Python in a separate, limited process without blocking the event loop.

Each call starts a fresh interpreter (``python -I``, running ``sandbox_child.py`` by path with
only ``rlkit``'s folder added to ``sys.path``, so the child imports nothing but :mod:`rlkit.limits`
before the code runs, whatever a package ``__init__`` imports) in its own session and its own temp
working dir, with:

- CPU time: ``RLIMIT_CPU`` (the kernel ends the process with SIGXCPU);
- wall time: the parent kills the whole process group at the deadline;
- memory: ``RLIMIT_AS`` (allocations past it fail: Python raises ``MemoryError``);
- network: a new empty network namespace where the kernel allows unprivileged user namespaces,
  and in every case an audit hook that refuses sockets and new processes;
- output: stdout and stderr are read as they come and cut at ``max_output_chars`` (the rest is
  drained and dropped, so a print loop cannot fill the parent's memory);
- the temp dir is deleted when the call ends, whatever happened.

The parent never runs the code and never unpickles anything from the child: it reads text.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import rlkit
from rlkit.agents.tools import sandbox_child
from rlkit.agents.tools.sandbox_child import MARKER

_READ_CHUNK = 65536
_CHILD_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")
# the folder that holds the rlkit package, and the child's bootstrap: put it on sys.path, run the file
_PACKAGE_ROOT = str(Path(rlkit.__file__).resolve().parent.parent)
_BOOT = "import runpy, sys; sys.path.insert(0, sys.argv[1]); runpy.run_path(sys.argv[2], run_name='__main__')"


@dataclass(frozen=True)
class SandboxLimits:
    """The limits of one sandboxed run.

    Attributes:
        cpu_limit_s: CPU seconds the code may use.
        wall_limit_s: Seconds from start to kill, whatever the code does (sleeping included).
        memory_limit_mb: Address space the code may add to the bare interpreter's, in MiB.
        max_output_chars: Characters kept of stdout and of stderr each.
        max_file_mb: Largest file the code may write in its temp dir, in MiB.
        network_namespace: Try the empty network namespace (the audit hook applies regardless).
    """

    cpu_limit_s: float = 5.0
    wall_limit_s: float = 10.0
    memory_limit_mb: int = 512
    max_output_chars: int = 4000
    max_file_mb: int = 64
    network_namespace: bool = True


@dataclass
class SandboxResult:
    """What one run produced.

    Attributes:
        stdout: Standard output, cut to the limit.
        stderr: Standard error (the sandbox's own marker line removed), cut to the limit.
        exit_code: The process's exit status (negative: the signal that ended it).
        status: ``ok``, ``error`` (non-zero exit), ``timeout`` (wall limit), ``cpu_limit``,
            ``memory_limit`` or ``output_limit`` (only when nothing else went wrong).
        network_guard: ``namespace`` or ``audit``: which guard cut the network.
        wall_s: Seconds the run took.
        truncated: Some output was cut.
    """

    stdout: str
    stderr: str
    exit_code: int | None
    status: str
    network_guard: str
    wall_s: float
    truncated: bool


async def _read_capped(
    stream: asyncio.StreamReader, limit: int, keep_end: bool = False
) -> tuple[bytes, bool]:
    """Read a stream to its end, keeping its first (or last) ``limit`` bytes; the rest is dropped."""
    kept = bytearray()
    cut = False
    while chunk := await stream.read(_READ_CHUNK):
        if keep_end:
            kept += chunk
            cut = cut or len(kept) > limit
            del kept[:-limit]
            continue
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
        cut = cut or len(chunk) > room
    return bytes(kept), cut


async def _read_stderr(stream: asyncio.StreamReader, limit: int) -> tuple[str, bytes, bool]:
    """The network guard from the child's marker line, then the last ``limit`` bytes of the rest."""
    try:
        first = await stream.readline()
    except ValueError:  # a first line longer than the stream's buffer: no marker
        first = b""
    guard, head = "audit", first
    if first.startswith(MARKER.encode()):
        guard, head = first.decode(errors="replace").partition("net=")[2].strip() or "audit", b""
    rest, cut = await _read_capped(stream, limit, keep_end=True)
    data = head + rest
    return guard, data[-limit:], cut or len(data) > limit


def _cut(text: str, limit: int, keep_end: bool = False) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters, keeping its start (or its end: a traceback's last line)."""
    if len(text) <= limit:
        return text, False
    if keep_end:
        return f"(truncated to the last {limit} characters)...\n" + text[-limit:], True
    return text[:limit] + f"\n...(truncated to {limit} characters)", True


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _status(exit_code: int | None, raw_stderr: str, timed_out: bool, cut: bool) -> str:
    if exit_code == -signal.SIGXCPU or exit_code == -signal.SIGKILL and not timed_out:
        return "cpu_limit"  # the soft limit's SIGXCPU, or the hard limit's SIGKILL a second later
    if timed_out:
        return "timeout"
    tail = raw_stderr.strip().splitlines()[-1:] or [""]
    if tail[0].startswith("MemoryError"):
        return "memory_limit"
    if exit_code != 0:
        return "error"
    return "output_limit" if cut else "ok"


async def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` in a fresh sandboxed interpreter; await it without blocking other tasks."""
    limits = limits or SandboxLimits()
    workdir = tempfile.mkdtemp(prefix="rlkit-sandbox-")
    env = {k: os.environ[k] for k in _CHILD_ENV_KEYS if k in os.environ}
    env.update(HOME=workdir, TMPDIR=workdir, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    config = {
        "cpu_limit_s": limits.cpu_limit_s,
        "memory_limit_mb": limits.memory_limit_mb,
        "max_file_mb": limits.max_file_mb,
        "network_namespace": limits.network_namespace,
    }
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-c",
        _BOOT,
        _PACKAGE_ROOT,
        str(Path(sandbox_child.__file__).resolve()),
        json.dumps(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=workdir,
        env=env,
        start_new_session=True,
    )
    byte_limit = 4 * limits.max_output_chars + 4096  # utf-8: at most 4 bytes a character
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    reads = asyncio.gather(_read_capped(proc.stdout, byte_limit), _read_stderr(proc.stderr, byte_limit))
    timed_out = False
    try:
        proc.stdin.write(code.encode("utf-8", errors="replace"))
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), limits.wall_limit_s)
    except asyncio.TimeoutError:
        timed_out = True
    finally:
        _kill_group(proc)  # also ends anything the code left behind in its session
        try:
            (out, out_cut), (guard, err, err_cut) = await asyncio.wait_for(reads, 5.0)
        except asyncio.TimeoutError:  # a descendant outside the group holds the pipes open
            (out, out_cut), (guard, err, err_cut) = (b"", False), ("audit", b"", False)
        if proc.returncode is None:
            await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(
        proc.returncode, out, err, guard, out_cut or err_cut, timed_out, limits, time.monotonic() - start
    )


def _result(
    exit_code: int | None,
    out: bytes,
    err: bytes,
    guard: str,
    byte_cut: bool,
    timed_out: bool,
    limits: SandboxLimits,
    wall_s: float,
) -> SandboxResult:
    raw_err = err.decode("utf-8", errors="replace")
    stdout, out_cut = _cut(out.decode("utf-8", errors="replace"), limits.max_output_chars)
    stderr, err_cut = _cut(raw_err, limits.max_output_chars, keep_end=True)
    cut = byte_cut or out_cut or err_cut
    status = _status(exit_code, raw_err, timed_out, cut)
    return SandboxResult(stdout, stderr, exit_code, status, guard, wall_s, cut)
