"""Packaging: every optional extra is used by some code path, and the images pin what they install.

vLLM, SGLang and Megatron-core were declared as extras (and vLLM installed in the CUDA image)
while ``rollout.engine`` accepted only ``native``; nothing may advertise SGLang as installable
until an engine uses it. vLLM has its engines now (``rlkit.rollout.vllm_engine``,
``rlkit.rollout.server_engine``) and its ``vllm`` extra; Megatron-core its training engine
(``rlkit.training.megatron_engine``, ``actor.strategy=megatron``) and its ``megatron`` extra.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]
# extras that hold tools, not code paths of rlkit
TOOLING_EXTRAS = {"test", "docs"}
# import names that differ from the distribution name
IMPORT_NAMES = {
    "torch-npu": "torch_npu",
    "tensorboard": "torch.utils.tensorboard",
    "megatron-core": "megatron.core",
}
UNSUPPORTED = ("sglang",)


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    return extras


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def test_every_runtime_extra_is_imported_by_rlkit() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "src" / "rlkit").rglob("*.py"))
    for extra, requirements in _extras().items():
        if extra in TOOLING_EXTRAS:
            continue
        for requirement in requirements:
            dist = _dist_name(requirement)
            module = IMPORT_NAMES.get(dist, dist.replace("-", "_"))
            used = re.search(
                rf"(import|from)\s+{re.escape(module)}\b|find_spec\(\"{re.escape(module)}\"\)", sources
            )
            assert used, f"extra {extra!r} installs {dist}, which no module of src/rlkit imports"


def test_unsupported_engines_are_neither_extras_nor_installed_nor_advertised() -> None:
    extras = _extras()
    for name in UNSUPPORTED:
        assert name not in extras
        assert not any(_dist_name(r).startswith(name) for reqs in extras.values() for r in reqs)
    texts = {p: p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]}
    texts.update({p: p.read_text() for p in (ROOT / "docker").iterdir() if p.is_file()})
    # a pip command, an extras list `.[a,b]`, a pinned version variable, a `==${...}` pin
    install = re.compile(r"(?i:pip install[^\n`]*)|\.\[[^\]]*|[A-Z_]+_VERSION[^\n]*|==\$\{[^}]*")
    for path, text in texts.items():
        for match in install.finditer(text):
            for name in UNSUPPORTED:
                assert name not in match.group(0).lower(), f"{path.relative_to(ROOT)}: {match.group(0)!r}"


def test_docker_versions_are_pinned_in_one_file_and_all_used() -> None:
    env = (ROOT / "docker" / "versions.env").read_text().splitlines()
    pinned = {line.split("=", 1)[0] for line in env if line.strip() and not line.startswith("#")}
    declared: set[str] = set()
    for dockerfile in (ROOT / "docker").glob("Dockerfile.*"):
        if dockerfile.suffix == ".dockerignore":
            continue
        args = re.findall(r"^ARG\s+(\w+)(=?)", dockerfile.read_text(), re.MULTILINE)
        declared |= {name for name, default in args if not default}
    assert pinned == declared, (
        f"only in versions.env: {pinned - declared}; only in a Dockerfile: {declared - pinned}"
    )
