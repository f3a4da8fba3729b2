"""Seeing a run: traces, `rlkit report` in a real headless Chromium (no console error, curves drawn,
the sample table filters and sorts, a screenshot that is not blank), the Prometheus endpoint scraped
during a real CPU run (step metrics and the engine's live gauges), and rollout replay (the replayed run's losses equal the recorded run's).

The browser tests skip with one reason where no Chromium is installed (``scripts/install_test_browser.sh``
installs Debian's as root).
Every fetch outside the page fails (``--host-resolver-rules``), so a page that needs the network shows
a console error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.logging.traces import TraceWriter, read_traces

_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
)


def chromium() -> str:
    """The Chromium binary, or skip the test naming the install line."""
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no headless Chromium installed (as root on Debian/Ubuntu: bash scripts/install_test_browser.sh)"
    )


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    """One Chromium launch with a fresh profile folder (no state carried between loads)."""
    env = {**os.environ, "HOME": str(profile)}
    user_data = tempfile.mkdtemp(prefix="chrome-", dir=profile)
    cmd = [chromium(), *_FLAGS, f"--user-data-dir={user_data}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)


def load(page: Path, fragment: str = "", *, profile: Path) -> tuple[str, list[str]]:
    """``(DOM after the page's script ran, console lines)`` of ``page`` opened as ``file://...#fragment``."""
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    proc = _run(["--virtual-time-budget=3000", "--dump-dom", url], profile)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def screenshot(page: Path, out: Path, *, profile: Path, size: str = "1400,1800") -> Path:
    """A PNG of ``page`` at ``size`` (width,height)."""
    proc = _run([f"--window-size={size}", f"--screenshot={out}", page.resolve().as_uri()], profile)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]
    return out


class _Rows(HTMLParser):
    """The ``<tr>`` attributes of the body of the table with id ``table_id``, in document order."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.depth, self.inside, self.rows = table_id, 0, False, []
        self.attrs: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table" and found.get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tbody":
            self.depth = 1
        elif self.inside and self.depth and tag == "tr":
            self.attrs.append(found)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.inside:
            self.inside = False


def table_rows(dom: str, table_id: str) -> list[dict[str, str | None]]:
    """Attributes of each body row of table ``table_id`` (a hidden row has a ``hidden`` key)."""
    parser = _Rows(table_id)
    parser.feed(dom)
    return parser.attrs


def attribute(dom: str, tag_pattern: str, name: str) -> list[str]:
    """Values of attribute ``name`` on every tag matching ``tag_pattern`` (a regex for the tag's start)."""
    out = []
    for tag in re.findall(rf"<{tag_pattern}[^>]*>", dom):
        found = re.search(rf'\b{name}="([^"]*)"', tag)
        if found:
            out.append(found.group(1))
    return out


def not_blank(png: Path) -> None:
    """The screenshot has content: many colours, and a fair share of pixels that are not background."""
    image = pytest.importorskip("PIL.Image").open(png).convert("RGB")
    small = image.resize((image.width // 4, image.height // 4))
    pixels = list(small.getdata())
    background = max(set(pixels), key=pixels.count)
    share = sum(p != background for p in pixels) / len(pixels)
    assert share > 0.03, f"{png}: {share:.1%} of the pixels differ from the background"
    assert len(set(pixels)) > 50, f"{png}: only {len(set(pixels))} colours"


# ------------------------------------------------------------------------ a run folder made here

SAMPLES = [  # (step, reward, finish, response)
    (1, 0.0, "stop", "12 apples"),
    (1, 1.0, "stop", "zebra crossing"),
    (1, 0.5, "length", "cut off mid senten"),
    (2, -1.0, "stop", "wrong answer"),
    (2, 2.0, "stop", "the best answer"),
]


def _fake_run(run: Path) -> Path:
    run.mkdir()
    (run / "config.yaml").write_text(
        "recipe: grpo\nmodel:\n  path: builtin:tiny\ntrainer:\n  total_steps: 4\n"
    )
    rows = [
        {
            "step": s,
            "reward/mean": 0.1 * s,
            "actor/entropy": 1.0 / s,
            "timing/gen_s": 0.5,
            "timing/step_s": 1.0,
        }
        for s in range(1, 5)
    ]
    (run / "metrics.jsonl").write_text("".join(f"{json.dumps(r)}\n" for r in rows))
    writer = TraceWriter(run, every=1, max_mb=10)
    for step in (1, 2):
        picked = [(i, s) for i, s in enumerate(SAMPLES) if s[0] == step]
        writer.write(
            step,
            {
                "row": [i for i, _ in picked],
                "uid": ["u"] * len(picked),
                "data_source": ["arith"] * len(picked),
                "prompt": ["<b>What</b> is 6+6?"] * len(picked),
                "response": [s[3] for _, s in picked],
                "ground_truth": ["12"] * len(picked),
                "prompt_ids": [[1, 2]] * len(picked),
                "response_ids": [[3]] * len(picked),
                "reward": [s[1] for _, s in picked],
                "advantage": [s[1] - 0.5 for _, s in picked],
                "prompt_length": [2] * len(picked),
                "response_length": [8 if s[2] == "length" else 3 for _, s in picked],
                "finish_reason": [s[2] for _, s in picked],
                "logprob_gap_mean": [1e-7] * len(picked),
                "logprob_gap_max": [2e-7] * len(picked),
            },
        )
    return run


def _report(run: Path) -> Path:
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    return run / "report.html"


def _visible(dom: str) -> list[dict[str, str | None]]:
    return [r for r in table_rows(dom, "samples") if "hidden" not in r]


def test_page_loads_draws_curves_and_filters(tmp_path: Path) -> None:
    page = _report(_fake_run(tmp_path / "run"))
    html = page.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html), "the page must not fetch anything"
    dom, console = load(page, profile=tmp_path)
    assert console == [], console
    assert 'data-ready="1"' in dom
    drawn = attribute(dom, "svg", "data-drawn")
    assert drawn and set(drawn) == {"1"}, drawn  # reward, entropy, timings
    assert len(drawn) == 3
    assert len(_visible(dom)) == len(SAMPLES)
    assert "&lt;b&gt;What&lt;/b&gt;" in dom  # text is shown as text, never as markup

    dom, console = load(page, "q=ZEBRA", profile=tmp_path)
    assert console == [] and [r["data-reward"] for r in _visible(dom)] == ["1.0"]
    dom, _ = load(page, "truncated=1", profile=tmp_path)
    assert [r["data-finish"] for r in _visible(dom)] == ["length"]
    dom, _ = load(page, "step=2&sort=reward&dir=asc", profile=tmp_path)
    assert [r["data-reward"] for r in _visible(dom)] == ["-1.0", "2.0"]  # step 2 only, worst first
    dom, _ = load(page, "sort=reward&dir=desc", profile=tmp_path)
    assert [float(r["data-reward"]) for r in _visible(dom)] == sorted((s[1] for s in SAMPLES), reverse=True)
    not_blank(screenshot(page, tmp_path / "report.png", profile=tmp_path))


def test_console_errors_are_seen(tmp_path: Path) -> None:
    """The check above is not vacuous: a page whose script fails shows up in the console lines."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>null.x;</script></body></html>")
    _, console = load(bad, profile=tmp_path)
    assert any("Uncaught TypeError" in line for line in console), console


# ------------------------------------------------------------------------ a real CPU run

HAVE_PROMETHEUS = importlib.util.find_spec("prometheus_client") is not None
TINY = [
    "trainer.total_steps=2",
    "data.batch_size=4",
    "actor.mini_batch_size=2",  # two updates a step: step 2 starts from updated weights
    "rollout.n=2",
    "data.max_response_length=4",  # short: some responses are cut (finish_reason length)
    "trainer.val_every=2",
    "data.synthetic_size=64",
    "data.val_batch_size=8",
    "trainer.trace_rows=5",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scraper(port: int, done: threading.Event, seen: list[str]) -> None:
    """Scrape the endpoint every 0.2 s until the run ends (at most 5 minutes), keeping each answer."""
    deadline = time.monotonic() + 300
    while not done.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                seen.append(response.read().decode())
        except OSError:
            pass
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> tuple[Path, list[str]]:
    """A 2-step GRPO run on the embedded default that records its rollouts, scraped over loopback
    while it runs (when the prometheus extra is installed)."""
    out = tmp_path_factory.mktemp("observed") / "run"
    loggers = "[jsonl,prometheus]" if HAVE_PROMETHEUS else "[jsonl]"
    port = _free_port()
    seen: list[str] = []
    done = threading.Event()
    thread = threading.Thread(target=_scraper, args=(port, done, seen), daemon=True)
    thread.start()
    try:
        args = ["train", "grpo", *TINY, f"trainer.loggers={loggers}", f"trainer.prometheus_port={port}"]
        args.append("trainer.replay=record")
        result = CliRunner().invoke(app, [*args, f"trainer.out_dir={out}"])
    finally:
        done.set()
        thread.join(timeout=10)
    assert result.exit_code == 0, result.output
    return out, seen


def test_run_writes_traces(cpu_run: tuple[Path, list[str]]) -> None:
    run, _ = cpu_run
    rows = read_traces(run)
    assert sorted({r["step"] for r in rows}) == [1, 2] and len(rows) == 10  # 5 of 8 rollouts a step
    for r in rows:
        assert r["response_length"] == len(r["response_ids"]) <= 4 and r["prompt"].strip()
        assert r["finish_reason"] in ("stop", "length") and r["logprob_gap_mean"] < 1e-3


@pytest.mark.skipif(not HAVE_PROMETHEUS, reason="the prometheus extra: pip install 'rlkit[prometheus]'")
def test_run_serves_prometheus_while_it_runs(cpu_run: tuple[Path, list[str]]) -> None:
    _, seen = cpu_run
    answers = [text for text in seen if "rlkit_reward_mean" in text]
    assert answers, f"no scrape during the run had the step metrics ({len(seen)} scrapes)"
    last = answers[-1]
    for name in (
        "rlkit_step",
        "rlkit_timing_gen_s",
        "rlkit_throughput_tokens_per_s",
        "rlkit_throughput_gen_tokens_per_s",
        "rlkit_throughput_rollout_engine_tokens_per_s",
    ):
        assert f'{name}{{run="run"}}' in last, name
    sequences = re.search(r'rlkit_rollout_engine_sequences\{run="run"\} (\S+)', last)
    assert sequences and float(sequences.group(1)) == 8.0  # 4 prompts x 2 samples, validation not counted
    # the engine's live gauges, read from the rollout worker at each scrape: they move while it runs
    live = [text for text in seen if _gauge(text, "rollout_engine_running_seqs") is not None]
    assert live, f"no scrape had the engine's live gauges ({len(seen)} scrapes)"
    rates = [_gauge(text, "rollout_engine_tokens_per_s") for text in live]
    assert max(rates) > 0 and len(set(rates)) >= 2, rates  # type: ignore[type-var, arg-type]
    for text in live:
        waiting = _gauge(text, "rollout_engine_waiting_seqs")
        used = _gauge(text, "rollout_engine_kv_cache_used_fraction")
        assert waiting is not None and waiting >= 0 and used is not None and 0.0 <= used <= 1.0


def _gauge(text: str, name: str) -> float | None:
    """The value of ``rlkit_<name>{run="run"}`` in a scraped page, or None."""
    found = re.search(rf'^rlkit_{name}\{{run="run"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_run_report_in_browser(cpu_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    run, _ = cpu_run
    page = _report(run)
    dom, console = load(page, profile=tmp_path)
    assert console == [], console
    drawn = attribute(dom, "svg", "data-drawn")
    assert len(drawn) >= 6 and set(drawn) == {"1"}, drawn
    assert len(_visible(dom)) == 10
    assert "step_2" in dom  # the checkpoint table
    truncated = sum(r["finish_reason"] == "length" for r in read_traces(run))
    dom, _ = load(page, "truncated=1", profile=tmp_path)
    assert len(_visible(dom)) == truncated
    not_blank(screenshot(page, tmp_path / "run.png", profile=tmp_path))


# ------------------------------------------------------------------------ rollout replay
COMPARED = ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "reward/mean", "advantages/mean")


def _train(*args: str) -> str:
    result = CliRunner().invoke(app, ["train", "grpo", *TINY, "trainer.loggers=[jsonl]", *args])
    return f"{result.exit_code}\n{result.output}"


def _steps(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "actor/pg_loss" in r]


def test_replay_repeats_the_recorded_losses_exactly(cpu_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    recorded, _ = cpu_run
    replayed = tmp_path / "replayed"
    assert sorted(p.name for p in (recorded / "replay").glob("*.safetensors")) == [
        "step_000001_round_1.safetensors",
        "step_000002_round_1.safetensors",
    ]
    out = _train(
        "trainer.replay=replay", f"trainer.replay_dir={recorded / 'replay'}", f"trainer.out_dir={replayed}"
    )
    assert out.startswith("0\n"), out
    a, b = _steps(recorded), _steps(replayed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for key in COMPARED:
        assert [r[key] for r in a] == [r[key] for r in b], key  # exactly: the same batch, the same math


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("rollout.n=4", "was made with rollout.n=2, this run has rollout.n=4"),
        ("trainer.total_steps=3", "has no step 3"),
    ],
)
def test_a_replay_that_does_not_match_is_one_line(tmp_path: Path, change: str, message: str) -> None:
    folder = tmp_path / "rec"
    folder.mkdir()
    index = {"config": {}, "steps": {"1": {"1": "x"}, "2": {"1": "x"}}}
    # the recording's config as the recorder writes it, for this TINY config
    from rlkit.cli._checks import compose
    from rlkit.config.compose import to_dataclass
    from rlkit.trainer.replay import recorded_config

    cfg = compose("grpo", profile=None, config_file=None, overrides=TINY, command="train")
    index["config"] = recorded_config(to_dataclass(cfg))
    (folder / "recording.json").write_text(json.dumps(index))
    out = _train(
        "trainer.replay=replay", f"trainer.replay_dir={folder}", change, f"trainer.out_dir={tmp_path / 'r'}"
    )
    assert out.startswith("2\n") and message in out and "Traceback" not in out, out
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_replay_without_a_recording_is_one_line(tmp_path: Path) -> None:
    out = _train("trainer.replay=replay", f"trainer.out_dir={tmp_path / 'r'}")
    assert out.startswith("2\n") and "needs trainer.replay_dir" in out, out
    out = _train(
        "trainer.replay=replay", f"trainer.replay_dir={tmp_path}", f"trainer.out_dir={tmp_path / 'r'}"
    )
    assert out.startswith("2\n") and "no recording there" in out, out
