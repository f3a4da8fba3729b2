"""load_custom_reward: checked with ast in the parent (never imported there), resolved in workers."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest

from rlkit.errors import UserError
from rlkit.rewards.custom import CustomRewardFn, load_custom_reward


def _write(folder: Path, source: str, name: str = "reward.py") -> Path:
    path = folder / name
    path.write_text(source, encoding="utf-8")
    return path


def test_valid_file_returns_a_picklable_reference_without_importing(tmp_path: Path) -> None:
    # Importing this file would raise: the parent must only parse it.
    path = _write(
        tmp_path,
        "raise RuntimeError('imported in the trainer!')\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return 1.0\n",
    )
    fn = load_custom_reward(path)
    assert fn == CustomRewardFn(path=str(path.resolve()), name="compute_score")
    assert pickle.loads(pickle.dumps(fn)) == fn
    assert not any(
        name.startswith("rlkit_custom_reward_") and str(path) in str(getattr(mod, "__file__", ""))
        for name, mod in sys.modules.items()
    )


def test_resolve_and_call_in_process(tmp_path: Path) -> None:
    _write(tmp_path, "SCALE = 2\n", name="helper_mod_for_reward.py")
    path = _write(
        tmp_path,
        "from helper_mod_for_reward import SCALE\n"
        "def my_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    return {'score': SCALE * float(solution_str == ground_truth), 'len': len(solution_str)}\n"
        "async def async_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return 0.5\n",
    )
    fn = load_custom_reward(path, "my_score")
    assert fn(data_source="x", solution_str="a", ground_truth="a", extra_info=None) == {
        "score": 2.0,
        "len": 1,
    }
    assert load_custom_reward(path, "async_score")("x", "a", "a") == 0.5


@pytest.mark.parametrize(
    ("source", "name", "match"),
    [
        (
            "def other(data_source, solution_str, ground_truth, extra_info=None): pass\n",
            "compute_score",
            r"defines no 'compute_score' \(it defines: other\)",
        ),
        ("compute_score = 3\n", "compute_score", "is a constant, not a function"),
        ("compute_score = {'a': 1}\n", "compute_score", "is a dict, not a function"),
        ("def compute_score(data_source, solution_str):\n    pass\n", "compute_score", "does not accept"),
        (
            "def compute_score(data_source, solution_str, ground_truth, extra_info, tokenizer):\n    pass\n",
            "compute_score",
            "requires tokenizer",
        ),
        ("def compute_score(:\n", "compute_score", r"not valid Python \(line 1\)"),
    ],
)
def test_error_paths(tmp_path: Path, source: str, name: str, match: str) -> None:
    path = _write(tmp_path, source)
    with pytest.raises(UserError, match=match) as info:
        load_custom_reward(path, name)
    assert "reward.custom" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file") as info:
        load_custom_reward(tmp_path / "nope.py")
    assert "reward.custom.path" in str(info.value.hint)


def test_accepted_bindings(tmp_path: Path) -> None:
    for source in (
        "from somewhere_else import compute_score\n",
        "from somewhere_else import *\n",
        "import functools\ncompute_score = functools.partial(print)\n",
        "try:\n    import x\nexcept ImportError:\n    def compute_score(**kwargs):\n        return 0\n",
        "class compute_score:\n    pass\n",
        "def compute_score(*, data_source, solution_str, ground_truth, extra_info=None):\n    return 0\n",
    ):
        assert load_custom_reward(_write(tmp_path, source)).name == "compute_score"


def test_batched_signature(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "def batch(data_sources, solution_strs, ground_truths, extra_infos):\n    return []\n"
    )
    assert load_custom_reward(path, "batch", batched=True).name == "batch"
    with pytest.raises(UserError, match="does not accept"):
        load_custom_reward(path, "batch")
