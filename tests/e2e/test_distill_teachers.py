"""Several teachers chosen per data row, through `rlkit train distill` on a parquet with a ``teacher`` column.

Two teachers of different sizes: ``large`` (the shipped 8-layer ``builtin:tiny-arith-teacher``, listed
first, so the default) and ``student`` (``builtin:tiny-arith``, the student itself). Every training row
names ``student``, so if the column reaches the teacher role the student is scored by its own weights
and the sampled-token reverse KL of the first step is zero up to float noise; a dropped column would
route every row to ``large`` (0.78 nats per token measured without the fix). One step of 4 prompts x 2
samples, about a minute on a 2-core CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.data.rl_parquet import rows_to_table, write_splits
from rlkit.data_prep import arith


def test_each_row_is_scored_by_the_teacher_its_column_names(
    tmp_path: Path, ray_session: None, tiny_run: list[str]
) -> None:
    splits = arith.generate_splits(16, 4, seed=1)
    for row in splits["train"]:
        row["teacher"] = "student"
    data = tmp_path / "data"
    write_splits({name: rows_to_table(rows) for name, rows in splits.items()}, data)
    out = tmp_path / "run"
    args = [
        "train",
        "distill",
        *tiny_run,
        "trainer.total_steps=1",
        f"data.train_files=[{data / 'train.parquet'}]",
        f"data.val_files=[{data / 'test.parquet'}]",
        'algo.distill.teachers=["large=builtin:tiny-arith-teacher","student=builtin:tiny-arith"]',
        f"trainer.out_dir={out}",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert abs(row["distill/reverse_kl"]) < 1e-3, row["distill/reverse_kl"]
