"""Only the device layer (``rlkit.hardware``) talks to ``torch.cuda`` / ``torch.npu`` / ``torch_npu``.

Everything else calls :mod:`rlkit.hardware`, so a new backend is one folder of changes. The
check reads code tokens (names and dots), so comments and docstrings may mention the modules.
"""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import rlkit

SRC = Path(rlkit.__file__).parent
DEVICE_LAYER = SRC / "hardware"
# path relative to src/rlkit -> why it may use a device module directly; keep it empty if possible
ALLOWED: dict[str, str] = {}
FORBIDDEN = (("torch", "cuda"), ("torch", "npu"))
FORBIDDEN_MODULES = ("torch_npu",)


def device_module_uses(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of each ``torch.cuda`` / ``torch.npu`` / ``torch_npu`` in the code of ``source``."""
    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type in (tokenize.NAME, tokenize.OP)
    ]
    hits = []
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.NAME and tok.string in FORBIDDEN_MODULES:
            hits.append((tok.start[0], tok.string))
        if i + 2 < len(tokens) and tokens[i + 1].string == ".":
            pair = (tok.string, tokens[i + 2].string)
            if pair in FORBIDDEN:
                hits.append((tok.start[0], ".".join(pair)))
        # `from torch import cuda`
        if tok.string == "from" and i + 3 < len(tokens) and tokens[i + 1].string == "torch":
            if tokens[i + 2].string == "import" and tokens[i + 3].string in ("cuda", "npu"):
                hits.append((tok.start[0], f"from torch import {tokens[i + 3].string}"))
    return hits


def test_the_scanner_finds_each_form() -> None:
    code = "import torch\nx = torch.cuda.is_available()\nfrom torch import npu\nimport torch_npu\n# torch.cuda in a comment\n"
    assert [line for line, _ in device_module_uses(code)] == [2, 3, 4]
    assert device_module_uses('"""torch.cuda in a docstring"""\n') == []


def test_no_device_module_outside_the_device_layer() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if path.is_relative_to(DEVICE_LAYER) or rel in ALLOWED:
            continue
        offenders += [f"{rel}:{line}: {text}" for line, text in device_module_uses(path.read_text())]
    assert not offenders, "call rlkit.hardware instead of the device module:\n" + "\n".join(offenders)


def test_allow_list_entries_still_exist() -> None:
    for rel in ALLOWED:
        assert (SRC / rel).is_file(), f"stale allow-list entry {rel}"
