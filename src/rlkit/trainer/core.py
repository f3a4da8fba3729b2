"""The one RL trainer core: the step loop every RL recipe runs (design.md §3).

    prompts -> rollout (n samples each) -> rewards -> old log-probs -> ref log-probs (KL terms)
    -> teacher log-probs and top-k (distillation) -> values (critic) -> KL in reward -> advantages -> critic update -> actor update
    -> weight sync to the rollout engine -> metrics, validation, checkpoint

Recipes change the loop only through :class:`~rlkit.trainer.hooks.Hooks` (batch filter, extra
generations and rows, batch rewrites before the update) and config (``ref.update_every`` refreshes the
reference model from the actor); the core never branches on a recipe's name. The math lives in
``rlkit.algos``; the heavy work runs in Ray workers (``rlkit.trainer.workers``).

How a run starts and stops (the summaries, Ctrl-C and SIGTERM, failure reports, stopping a local
Ray) is in :meth:`RLTrainer.fit`, with the pieces in ``rlkit.trainer.lifecycle`` and
``rlkit.trainer.summary``.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import ray

from rlkit.algos import advantage_estimators, apply_kl_penalty
from rlkit.ckpt.layout import checkpoints_dir, newest_complete, step_name
from rlkit.config.schema import RlkitConfig
from rlkit.controller import stop_ray
from rlkit.data.batch import Batch
from rlkit.errors import UserError
from rlkit.logging import MetricsLogger
from rlkit.logging.traces import TraceWriter
from rlkit.profiling.profiler import ProfileWindow
from rlkit.profiling.timers import StageTimer
from rlkit.trainer import stats
from rlkit.trainer.algo_inputs import (
    apply_distillation,
    apply_rollout_correction,
    estimator_extras,
    needs_sum_pi_squared,
    old_log_probs_source,
)
from rlkit.trainer.feed import RolloutFeed, feed_depth, partial_metrics, staleness_bound, staleness_metrics
from rlkit.trainer.hooks import Hooks, first_prompts
from rlkit.trainer.lifecycle import RunInterrupted, StopSignals, deadlines, record_failure, resume_command
from rlkit.trainer.replay import RolloutRecorder, RolloutReplayer, check_replay, open_replay
from rlkit.trainer.run_start import RunStart
from rlkit.trainer.setup import RunContext, build_run, open_rl_run
from rlkit.trainer.summary import RunSummary, announce, console, opening, settle
from rlkit.trainer.traces import sample_rows, trace_columns


class RLTrainer:
    """Runs ``cfg.trainer.total_steps`` RL steps of a composed config."""

    def __init__(self, cfg: RlkitConfig, hooks: Hooks | None = None) -> None:
        self.cfg = cfg
        self.hooks = hooks or Hooks()
        self.old_log_probs = old_log_probs_source(cfg, self.hooks.reads_old_log_probs)
        self.timer = StageTimer()
        self.signals = StopSignals()
        self.summary: RunSummary | None = None
        self._step_now = 0
        self._tracer: TraceWriter | None = None
        self._replay: RolloutRecorder | RolloutReplayer | None = None
        check_replay(cfg)  # a replay's recording matches this config, before Ray or any worker starts
        # validated here, before Ray or any worker starts
        self.profile_window = ProfileWindow.from_settings(
            cfg.trainer.profile, cfg.trainer.profile_steps, cfg.trainer.total_steps
        )

    def fit(self) -> Path:
        """Train; returns the run directory.

        Raises:
            RunInterrupted: Ctrl-C or SIGTERM stopped the run (after saving, for the first signal).
            WorkerError: A worker failed; the full report is in ``RUN/error.log``.
        """
        announce(self.cfg)
        ray_was_up = ray.is_initialized()
        start: RunStart | None = None
        run: RunContext | None = None
        with self.signals:
            try:
                start = open_rl_run(self.cfg)  # run folder, lock and resume point, before Ray starts
                if start.nothing_left:
                    settle()
                    start.close()
                    return start.run_dir
                run = build_run(self.cfg, start)
                settle()
                self.signals.install()  # a local Ray's node replaced the SIGTERM handler
                self.summary = RunSummary(run.run_dir, run.start_step)
                console.print(opening(self.cfg, run, self.old_log_probs))
                self._loop(run)
                self.summary.checkpoint = _newest_checkpoint(run.run_dir)
                console.print(self.summary.closing())
            except BaseException as caught:
                settle()
                exc = self.signals.translate(caught)  # Ray may have replaced our RunInterrupted
                self._on_exit(run.run_dir if run is not None else start.run_dir if start else None, exc)
                if exc is not caught:
                    raise exc from None
                raise
            finally:
                self.signals.closing = True
                if run is not None:
                    run.close()
                if not ray_was_up:
                    stop_ray()  # a local Ray started for this run goes with it
        assert run is not None
        return run.run_dir

    def _on_exit(self, folder: Path | None, exc: BaseException) -> None:
        """Report a failed or interrupted run: ``RUN/error.log`` for a failure, the summary for a stop."""
        if isinstance(exc, RunInterrupted):
            if self.summary is not None and not exc.summarised:
                newest = self.summary.checkpoint = _newest_checkpoint(self.summary.run_dir)
                resume = resume_command(self.cfg.recipe, newest) if newest is not None else None
                console.print(self.summary.closing(stopped_by=self.signals.name, resume=resume))
        elif not isinstance(exc, (UserError, KeyboardInterrupt)):
            if folder is not None and folder.is_dir():
                record_failure(folder, exc, self._step_now)

    def _stop_after(self, run: RunContext, step: int) -> None:
        """A signal asked to stop: save ``step`` unless it is saved, print the summary, raise."""
        assert self.summary is not None
        path = _newest_checkpoint(run.run_dir)
        if path is None or path.name != step_name(step):
            console.print(f"[yellow]saving step {step} before stopping ...[/]")
            with self.timer("save"):
                path = run.save_checkpoint(step)
        self.summary.checkpoint = path
        resume = resume_command(self.cfg.recipe, path)
        console.print(self.summary.closing(stopped_by=self.signals.name, resume=resume))
        raise RunInterrupted(
            f"interrupted by {self.signals.name} after step {step}: checkpoint saved to {path} "
            "(the resume command is above)",
            self.signals.exit_code,
            summarised=True,
        )

    def _sync_weights(self, run: RunContext, step: int) -> None:
        """Actor -> rollout engine weights, under ``hardware.sync_timeout_s``.

        Every rollout worker checks that its engine took the weights of ``step`` (version and
        checksum) and fails the call with one line naming the step if it did not.
        """
        run.sync_weights(step, deadlines(self.cfg, run.group.device).sync_s)

    # ------------------------------------------------------------------ the loop
    def _loop(self, run: RunContext) -> None:
        cfg = self.cfg
        start = run.start_step
        logger = MetricsLogger(
            run.run_dir,
            list(cfg.trainer.loggers),
            total_steps=cfg.trainer.total_steps,
            start_step=start,
            project=cfg.trainer.project,
            experiment=cfg.trainer.experiment,
            config=run.config_dict,
            console_every=cfg.trainer.log_every,
            prometheus_port=cfg.trainer.prometheus_port,
            prometheus_host=cfg.trainer.prometheus_host,
            live_gauges=lambda: self._live_engine_gauges(run),
        )
        self._tracer = TraceWriter(
            run.run_dir, every=cfg.trainer.trace_every, max_mb=cfg.trainer.trace_max_mb, start_step=start
        )
        self._replay = open_replay(cfg, run.run_dir)
        run.feed = self._open_feed(run)
        try:
            self._sync_weights(run, start)
            if (
                cfg.trainer.val_before_train
                and cfg.trainer.val_every > 0
                and start == 0
                and run.val_data is not None
            ):
                before = self._validate(run)
                logger.log(0, before)
                self._after_step(run, 0, before)
            self.signals.stepping = True  # from here a first signal stops after the step
            for step in range(start + 1, cfg.trainer.total_steps + 1):
                self._step_now = step
                if self.profile_window.starts_at(step):
                    run.start_profiler(self.profile_window)
                metrics = self._step(run, step)
                if self.profile_window.stops_at(step):
                    run.stop_profiler()
                if cfg.trainer.val_every > 0 and run.val_data is not None:
                    if step % cfg.trainer.val_every == 0 or step == cfg.trainer.total_steps:
                        metrics.update(self._validate(run))
                metrics.update(self.timer.metrics())
                # the row is on disk before the checkpoint of its step (timing/save_s: next row)
                logger.log(step, metrics)
                save_every = cfg.trainer.save_every
                if step == cfg.trainer.total_steps or (save_every > 0 and step % save_every == 0):
                    with self.timer("save"):
                        run.save_checkpoint(step)
                self._after_step(run, step, metrics)
        finally:
            logger.close()

    def _open_feed(self, run: RunContext) -> RolloutFeed:
        """The schedule of ``trainer.mode``, holding the resume point's queued draws if any."""

        def draw_prompts() -> Batch:
            prompts = run.next_prompts()
            prompts.set("uid", np.array([uuid.uuid4().hex for _ in range(len(prompts))], dtype=object))
            return prompts

        def generate(prompts: Batch, step: int, round_: int) -> Future[Batch]:
            # a seed per (step, round) makes sampling reproducible, so a resumed run repeats exactly
            seed = (self.cfg.trainer.seed * 1_000_003 + step * 1_009 + round_) % 2**31
            sampling = {**run.train_sampling, "seed": seed}
            return run.lane.submit(self._rollouts, run, prompts, sampling, step, round_)

        feed = RolloutFeed(feed_depth(self.cfg), staleness_bound(self.cfg), draw_prompts, generate)
        if run.queued is not None and run.queued[1]:
            feed.load(*run.queued)
        return feed

    def _after_step(self, run: RunContext, step: int, metrics: dict[str, Any]) -> None:
        """Note ``step``'s metrics for the closing summary; stop here if a signal asked to."""
        assert self.summary is not None
        self.summary.observe(step, metrics)
        if self.signals.requested and 0 < step < self.cfg.trainer.total_steps:
            self._stop_after(run, step)

    def _step(self, run: RunContext, step: int) -> dict[str, Any]:
        cfg, timer = self.cfg, self.timer
        started = time.perf_counter()
        with timer("gen"):
            batch, gen_metrics = self._generate_training_batch(run, step)
        gen_s = time.perf_counter() - started
        gen_metrics["throughput/gen_tokens_per_s"] = float(batch["response_mask"].sum()) / max(gen_s, 1e-9)
        off_policy = cfg.trainer.mode != "sync"
        if off_policy:
            gen_metrics.update(self._generate_ahead(run, step, batch))
        else:
            gen_metrics.update(self._engine_gauges(run))
        temperature = cfg.rollout.temperature
        if self.old_log_probs == "rollout":  # bypass mode: the engine's log-probs
            batch.set("old_log_probs", batch["rollout_log_probs"])
        elif self.old_log_probs == "recompute":
            with timer("old_log_prob"):
                batch = batch.union(run.actor.compute_log_prob(batch, temperature, needs_sum_pi_squared(cfg)))
        if run.ref is not None:
            with timer("ref"):
                batch = batch.union(run.ref.compute_ref_log_prob(batch, temperature))
        if run.teacher is not None:
            with timer("teacher"):
                batch = batch.union(run.teacher.compute_teacher(batch, temperature, cfg.algo.distill.topk))
        if run.critic is not None:
            with timer("values"):
                batch = batch.union(run.critic.compute_values(batch))
        with timer("adv"):
            metrics = apply_rollout_correction(cfg, batch)
            metrics.update(self._advantages(run, batch))
            metrics.update(apply_distillation(cfg, batch))
            metrics.update(self.hooks.before_update(run, batch))
        if run.critic is not None:
            with timer("update_critic"):
                metrics.update(run.critic.update(batch, run.critic_update_settings))
        if step > cfg.trainer.critic_warmup:
            run.sleep_rollout()
            with timer("update_actor"):
                batch = self._update_actor(run, batch, metrics)
            if cfg.trainer.partial_rollouts == "finish":  # continue: the push reaches them in flight
                self._settle_rollouts(run)
            with timer("sync"):
                self._sync_weights(run, step)
            every = cfg.ref.update_every
            if run.ref is not None and every > 0 and step % every == 0:
                with timer("ref_sync"):
                    run.ref.sync_from_actor()
        else:  # a critic-only step: the rollout workers are free again before the next step's hooks
            self._settle_rollouts(run)
        if off_policy:  # what the engine generated for the steps ahead, whichever process it ran in
            gen_metrics.update(self._engine_gauges(run))
        step_s = time.perf_counter() - started
        metrics.update(gen_metrics)
        metrics.update(stats.batch_metrics(batch))
        metrics["timing/step_s"] = step_s
        metrics["throughput/tokens_per_s"] = float(batch["attention_mask"].sum()) / step_s
        metrics["throughput/tokens_per_s_per_device"] = metrics["throughput/tokens_per_s"] / run.world_size
        self._trace(run, step, batch)
        return metrics

    def _update_actor(self, run: RunContext, batch: Batch, metrics: dict[str, Any]) -> Batch:
        """The actor's update (its metrics into ``metrics``); with ``old_log_probs`` from the update
        itself (``actor.old_log_probs=auto`` on one on-policy pass) the batch gets them from it."""
        # the old-log-prob pass reports actor/entropy; where it does not run, the update does
        settings = {**run.actor_update_settings, "entropy_metric": self.old_log_probs != "recompute"}
        if self.old_log_probs != "update":
            metrics.update(run.actor.update(batch, settings))
            return batch
        out = run.actor.update_on_policy(batch, settings)
        metrics.update(out.meta)
        return batch.union(Batch(tensors=out.tensors))

    def _settle_rollouts(self, run: RunContext) -> None:
        """Wait for the rollouts generating beside the step (split placement): they finish on the
        weights they started with, before the next push or any other call on the rollout workers."""
        if run.lane.concurrent and run.feed is not None:
            with self.timer("wait_rollout"):
                run.feed.settle()

    def _generate_ahead(self, run: RunContext, step: int, batch: Batch) -> dict[str, float]:
        """Queue the next steps' rollouts, sampled with the weights ``step`` trains (off-policy modes).

        Returns the staleness of ``batch`` and the queue's metrics. With split placement the
        rollouts generate beside this step's passes; colocated, they generate now.
        """
        assert run.feed is not None
        metrics = staleness_metrics(batch, step - 1)
        if self.cfg.trainer.partial_rollouts == "continue":
            metrics.update(partial_metrics(batch))
        with self.timer("gen_ahead"):
            run.feed.fill(step + 1, step - 1)
        metrics.update(run.feed.metrics())
        return metrics

    def _engine_gauges(self, run: RunContext) -> dict[str, float]:
        """``rollout/engine/<gauge>`` of this step's generation (summed over ranks; rates as
        ``throughput/rollout_engine_<gauge>``: wall-clock rates go with the others, a resumed run
        differs only there)."""
        out: dict[str, float] = {}
        for name, value in stats.merge_rank_gauges(run.rollout_gauges()).items():
            prefix = "throughput/rollout_engine_" if name.endswith("_per_s") else "rollout/engine/"
            out[prefix + name] = value
        return out

    @staticmethod
    def _live_engine_gauges(run: RunContext) -> dict[str, float]:
        """``rollout/engine/<gauge>`` of the engines right now (the Prometheus endpoint's, per scrape)."""
        group = run.rollout_group or run.group  # split placement: the rollout workers are their own group
        merged = stats.merge_rank_gauges(group.probe("rollout", "live_gauges"))
        return {f"rollout/engine/{name}": value for name, value in merged.items()}

    def _trace(self, run: RunContext, step: int, batch: Batch) -> None:
        """A sample of ``step``'s rollouts to ``RUN/traces`` every ``trainer.trace_every`` steps."""
        if self._tracer is None or not self._tracer.wants(step):
            return
        with self.timer("trace"):
            rows = sample_rows(len(batch), self.cfg.trainer.trace_rows, self.cfg.trainer.seed * 7919 + step)
            try:
                self._tracer.write(step, trace_columns(batch, run.tokenizer, rows))
            except (KeyError, ValueError, IndexError) as exc:  # a hook's batch without a traced column
                console.print(
                    f"[yellow]traces: step {step} could not be traced ({exc}); no more traces this run[/]"
                )
                self._tracer = None  # the training itself goes on

    # ------------------------------------------------------------------ stages
    def _generate_training_batch(self, run: RunContext, step: int) -> tuple[Batch, dict[str, float]]:
        """Generate and score batches until the hooks' filter keeps ``data.batch_size`` prompts."""
        cfg = self.cfg
        kept: list[Batch] = []
        kept_prompts, rounds, drawn = 0, 0, 0
        metrics: dict[str, float] = {}
        assert run.feed is not None
        while kept_prompts < cfg.data.batch_size:
            rounds += 1
            # the weights of version step - 1 (after that step's update) train this step
            draw = run.feed.take(step, rounds, step - 1)
            prompts, batch = draw.prompts, draw.rollouts
            batch = self.hooks.after_generate(run, prompts, batch)
            batch, reward_metrics = run.score(batch)
            metrics.update(reward_metrics)
            drawn += len(prompts)
            batch = self.hooks.filter_batch(batch)
            kept.append(batch)
            kept_prompts += len(np.unique(batch["uid"]))
            limit = self.hooks.max_generation_rounds(cfg)
            if kept_prompts < cfg.data.batch_size and limit and rounds >= limit:
                extra = self.hooks.on_exhausted(rounds, kept_prompts, cfg.data.batch_size)
                if extra is not None:
                    kept.append(extra)
                break
        # by prompts, not rows: a hook may change the rows per prompt (SPIN pairs each sample)
        batch = first_prompts(Batch.concat(kept), cfg.data.batch_size)
        metrics.update(
            {
                "gen/rounds": float(rounds),
                "gen/prompts_drawn": float(drawn),
                "gen/prompts_kept": float(kept_prompts),
            }
        )
        return batch, metrics

    def _rollouts(
        self, run: RunContext, prompts: Batch, sampling: dict[str, Any], step: int, round_: int
    ) -> Batch:
        """The engine's rollouts of ``prompts``; recorded or replayed under ``trainer.replay``."""
        if isinstance(self._replay, RolloutReplayer):
            return self._replay.rollouts(step, round_, prompts)
        batch = run.generate(prompts, sampling)
        if isinstance(self._replay, RolloutRecorder):
            self._replay.rollouts(step, round_, prompts, batch)
        return batch

    def _advantages(self, run: RunContext, batch: Batch) -> dict[str, float]:
        algo = self.cfg.algo
        metrics: dict[str, float] = {}
        scores, mask = batch["token_level_scores"], batch["response_mask"]
        if algo.use_kl_in_reward:
            rewards, current_kl = apply_kl_penalty(
                scores,
                batch["old_log_probs"],
                batch["ref_log_prob"],
                mask,
                run.kl_ctrl.value,
                algo.kl_penalty,
            )
            metrics["actor/reward_kl_penalty"] = float(current_kl)
            metrics["actor/reward_kl_penalty_coeff"] = float(run.kl_ctrl.value)
            run.kl_ctrl.update(float(current_kl), n_steps=self.cfg.data.batch_size)
        else:
            rewards = scores
        batch.set("token_level_rewards", rewards)
        estimator = advantage_estimators[algo.advantage]
        advantages, returns = estimator(
            token_level_rewards=rewards,
            response_mask=mask,
            index=batch["uid"],
            values=batch["values"] if "values" in batch else None,
            reward_baselines=batch["reward_baselines"] if "reward_baselines" in batch else None,
            gamma=algo.gamma,
            lam=algo.lam,
            norm_adv_by_std_in_grpo=algo.norm_adv_by_std_in_grpo,
            sppo_beta=algo.sppo_beta,
            **estimator_extras(self.cfg, batch),
        )
        batch.set("advantages", advantages)
        batch.set("returns", returns)
        return metrics

    def _validate(self, run: RunContext) -> dict[str, float]:
        with self.timer("val"):
            batches = [run.lane.run(run.generate, prompts, run.val_sampling) for prompts in run.val_batches()]
            scored = [run.score(b)[0] for b in batches]
            run.rollout_gauges()  # the engine gauges of a step are its training generation's only
        return stats.validation_metrics(Batch.concat(scored))


def _newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, if any."""
    newest = newest_complete(checkpoints_dir(run_dir))
    return newest.path if newest is not None else None
