from __future__ import annotations

from pathlib import Path

from rlkit.config.docs import render

ROOT = Path(__file__).resolve().parents[3]


def test_config_reference_is_up_to_date() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == render(), (
        "docs/config.md is stale: run `python -m rlkit.config.docs > docs/config.md`"
    )
