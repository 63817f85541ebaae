"""The one training loop the three training scripts share.

One process or many (torchrun → DDP, gloo on CPU, NCCL on CUDA); torch.amp mixed
precision; gradient accumulation and clipping; validation every epoch with every sample
counted once; atomic checkpoints (last + best) that resume exactly at epoch boundaries;
progress bars, JSONL/CSV logs and optional TensorBoard. Non-finite losses skip the step,
and too many in a row stop the run with a clear message.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common.core import distributed as dist
from common.core.checkpoint import (
    best_checkpoint,
    read_resume_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from common.core.progress import progress
from common.core.runtime import autocast, exact_fp32, resolve_amp, to_memory_format
from common.core.scores import NOT_PRISTINE
from common.core.user_errors import UsageError, clip
from common.evaluation.thresholds import ChosenThresholds, ThresholdCollector
from common.training.checks import LATEST_EPOCH, check_config, check_values
from common.training.config import save_yaml
from common.training.loaders import build_dataset, train_loader, val_loader, workers_compete
from common.training.optim import build_optimizer, freeze_unused, lr_factor, scaler_step
from common.training.run_log import RunLog
from common.training.tasks import Task, initial_model
from models import unwrap_model

log = logging.getLogger("mvss.train")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses: the run stops rather than save NaNs."""


# ----------------------------------------------------------------------------- the loop


class Trainer:
    def __init__(self, cfg: dict[str, Any], task: Task) -> None:
        self.cfg = cfg
        self.task = task
        self.device = dist.init_from_env(cfg["device"])
        self.main = dist.is_main()
        self.out = Path(cfg["out_dir"])
        # Everything a user can get wrong (data, weights, resume file) is read before the
        # run folder is written, so a user error leaves nothing half-made behind.
        self.train_ds = build_dataset(cfg["train_list"], cfg, task.nclass, train=True)
        self.val_ds = (
            build_dataset(cfg["val_list"], cfg, task.nclass, False, task.eval_size(cfg))
            if cfg.get("val_list")
            else None
        )
        torch.manual_seed(cfg["seed"])  # identical initial weights on every rank
        model = initial_model(task, cfg, log if self.main else None)
        freeze_unused(model)
        model.to(self.device)
        if cfg["channels_last"]:
            model.to(memory_format=torch.channels_last)
        self.model: nn.Module = model
        self.find_unused = bool(cfg["ddp_find_unused_parameters"])
        self.trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if dist.world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=self.find_unused
            )
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, cfg)
        batches = math.ceil(len(self.train_ds) / (cfg["batch_size"] * dist.world_size()))
        if cfg["max_steps_per_epoch"]:
            batches = min(batches, cfg["max_steps_per_epoch"])
        self.batches_per_epoch = batches
        self.steps_per_epoch = math.ceil(batches / cfg["accumulate"])
        total = self.steps_per_epoch * cfg["epochs"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg, self.steps_per_epoch, total)
        )
        if cfg["amp"] == "auto":  # rank 0 measures, every rank runs its choice
            measured = resolve_amp("auto", self.device) if self.main else None
            amp, why = dist.gather_objects(measured)[0]
            cfg["amp"] = amp
            if self.main:
                log.info("amp auto → %s (%s)", amp, why)
        competing = workers_compete(cfg["workers"], self.device)
        if competing and self.main:
            log.warning("%s", competing)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg["amp"] == "fp16")
        self.start_epoch = 0
        self.val_skipped_said: set[str] = set()
        self.best_score: float | None = None
        self.val_thresholds: ChosenThresholds | None = None
        self.nonfinite_in_row = 0
        self.scaler_skips = 0  # steps the fp16 gradient scaler skipped this epoch
        if cfg.get("resume"):
            self._resume(cfg["resume"])
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(self.out / "config.yaml", cfg)

    # -- checkpoints
    def _state(self, epoch: int) -> dict[str, Any]:
        model_cfg = self.task.model_config(self.cfg)
        return {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best_score": self.best_score,
            "config": {
                **self._run_settings(),
                "model": model_cfg,
                "task": self.task.name,
                "val_score": self.task.score,  # what best_score was measured on
            },
            "rng": rng_state(),
        }

    def _run_settings(self) -> dict[str, Any]:
        """The config, and the number of processes (it sets the steps per epoch, so the
        learning-rate schedule)."""
        return {**self.cfg, "processes": dist.world_size()}

    def _resume(self, path: str) -> None:
        """Continue from one of our checkpoints; one that cannot be read or that belongs
        to another network or run setup is a user error (nothing is written yet)."""
        model = unwrap_model(self.model)
        state = read_resume_state(path, self.task.name, model.state_dict())
        try:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.start_epoch = int(state["epoch"]) + 1
            self.best_score = self._resumed_best_score(state)
            set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UsageError(
                f"cannot resume from this checkpoint: {type(exc).__name__}: {clip(first)}",
                f"--resume {path}",
                "same optimizer and options as the run it came from",
            ) from exc
        if self.main:
            log.info("resumed from %s at epoch %d", path, self.start_epoch)
            changed = changed_settings(state.get("config") or {}, self._run_settings())
            if changed:
                log.warning(
                    "resumed with other settings than the run had (it continues with the "
                    "new ones): %s",
                    "; ".join(changed),
                )

    def _resumed_best_score(self, state: dict[str, Any]) -> float | None:
        """The score best.pt was kept for, if it measures what this run's ``best_metric``
        does; resumed with another one, the next validated epoch becomes best.pt (a score
        of another metric, or of a ``last`` phase, would otherwise keep a worse epoch)."""
        config = state.get("config") or {}
        saved = config.get("best_metric")
        if saved not in (None, self.cfg["best_metric"]):
            if self.main:
                log.info(
                    "best_metric was %s, now %s: the next validated epoch becomes best.pt",
                    saved,
                    self.cfg["best_metric"],
                )
            return None
        # runs from before it was recorded validated on 1 - P(pristine) / P(authentic)
        scored_on = config.get("val_score", NOT_PRISTINE)
        if scored_on != self.task.score:
            if self.main:
                log.info(
                    "best.pt's score was measured on %s, this run validates on %s: the "
                    "next validated epoch becomes best.pt",
                    scored_on,
                    self.task.score,
                )
            return None
        return state.get("best_score")

    # -- one epoch
    def _forward(self, images: torch.Tensor, model: nn.Module | None = None) -> Any:
        with autocast(self.device, self.cfg["amp"]):
            return (model or self.model)(to_memory_format(images, self.cfg["channels_last"]))

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        loader = train_loader(self.train_ds, cfg, epoch)
        sums: dict[str, float] = {}
        seen = nonfinite = steps_done = 0
        # rows, not samples: DistributedSampler pads a shard by repeating rows, and a bad
        # row drawn twice (always on another rank) is one bad file
        skipped: dict[int, tuple[str, str]] = {}
        start = time.perf_counter()
        accumulate = cfg["accumulate"]
        bar = progress(
            loader,
            total=self.batches_per_epoch,
            disable=not self.main,
            desc=f"epoch {epoch + 1}/{cfg['epochs']}",
            unit="batch",
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler_skips = 0
        pending = False  # gradients accumulated since the last optimiser step
        for i, batch in enumerate(bar):
            if i >= self.batches_per_epoch:
                break
            for row, (path, reason) in zip(batch["skipped_rows"], batch["skipped"], strict=True):
                if row not in skipped and dist.world_size() == 1:  # said as it happens
                    log.warning("skipped %s: %s", path, reason)
                skipped.setdefault(row, (path, reason))
            last_micro = (i + 1) % accumulate == 0 or i + 1 == self.batches_per_epoch
            if dist.any_true(batch["count"] == 0, self.device):
                # a rank got no usable sample: all ranks skip together; a window that
                # ends here still steps on what it gathered (gradients averaged by hand,
                # as the skipped backward would have synchronised them)
                if last_micro and pending:
                    dist.average_gradients(self.trainable)
                    self._optimizer_step()
                    steps_done += 1
                    pending = False
                continue
            batch = self._to_device(batch)
            sync = (
                contextlib.nullcontext()
                if last_micro or dist.world_size() == 1
                else self.model.no_sync()
            )
            first_micro = i % accumulate == 0
            with sync:
                parts = self.task.loss(self._forward(batch["image"]), batch)
                loss = parts["loss"]
                if dist.any_true(not bool(torch.isfinite(loss)), self.device):
                    if dist.world_size() > 1:
                        # DDP waits for a backward after every forward; run one and let
                        # _on_nonfinite discard its gradients.
                        (loss * 0.0).backward()
                    self._on_nonfinite()  # discards this window's gradients
                    nonfinite += 1
                    pending = False
                    continue
                self.nonfinite_in_row = 0
                self.scaler.scale(loss / accumulate).backward()
                pending = True
            if first_micro and not self.find_unused:
                dist.require_every_gradient(self.trainable)
            if last_micro:
                self._optimizer_step()
                steps_done += 1
                pending = False
            n = int(batch["count"])
            seen += n
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            rate = seen * dist.world_size() / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", img_s=f"{rate:.2f}")
        elapsed = time.perf_counter() - start
        skipped_count = self._name_skipped_once(skipped)
        stats = {f"train_{k}": v / max(seen, 1) for k, v in sums.items()}
        stats.update(
            lr=self.optimizer.param_groups[0]["lr"],
            images_per_second=dist.sum_int(seen, self.device) / max(elapsed, 1e-9),
            skipped_samples=skipped_count,
            nonfinite_steps=nonfinite,
            optimizer_steps=steps_done,
            scaler_skipped_steps=self.scaler_skips,
            loss_scale=self.scaler.get_scale() if self.scaler.is_enabled() else None,
        )
        if self.main:
            self._say_if_scaler_fails(steps_done, stats["loss_scale"])
        return stats

    def _say_if_scaler_fails(self, steps: int, scale: float | None) -> None:
        """fp16's gradient scaler skips a step whose gradients overflowed (or are NaN) and
        halves its scale. A few skips are how it finds its scale; many, or a scale under
        1, mean the gradients are lost, and the run stops learning with finite losses."""
        if scale is None or not (scale < 1 or self.scaler_skips > max(steps // 10, 8)):
            return
        log.warning(
            "fp16: the gradient scaler skipped %d of %d steps (gradients not finite) and its "
            "scale is %.3g: the model is not learning from those steps; use --amp bf16 (or "
            "off) instead",
            self.scaler_skips,
            steps,
            scale,
        )

    def _name_skipped_once(self, skipped: dict[int, tuple[str, str]]) -> int:
        """How many distinct rows every rank skipped this epoch; under torchrun the main
        process names each once (the ranks' own logs would name a padded row twice)."""
        if dist.world_size() == 1:
            return len(skipped)
        merged: dict[int, tuple[str, str]] = {}
        for shard in dist.gather_objects(skipped):
            merged.update(shard)
        if self.main:
            for row in sorted(merged):
                log.warning("skipped %s: %s", *merged[row])
        return len(merged)

    def _on_nonfinite(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_row += 1
        log.warning("non-finite loss: step skipped (%d in a row)", self.nonfinite_in_row)
        if self.nonfinite_in_row > self.cfg["max_nonfinite"]:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_row} consecutive non-finite losses: stopping. Lower the "
                "learning rate, use --amp bf16 instead of fp16, or check the data."
            )

    def _optimizer_step(self) -> None:
        if self.cfg["clip_grad"] > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg["clip_grad"])
        self.scaler_skips += scaler_step(self.scaler, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def validate(self) -> dict[str, Any]:
        """Metrics on the validation split, and the thresholds chosen there. In fp32 on a
        GPU it runs without TF32, as inference does (:func:`exact_fp32`)."""
        exact = exact_fp32(self.device) if self.cfg["amp"] == "off" else contextlib.nullcontext()
        with torch.inference_mode(), exact:
            return self._validate()

    def _validate(self) -> dict[str, Any]:
        assert self.val_ds is not None
        self.model.eval()
        evaluator = self.task.new_evaluator()
        collector = ThresholdCollector(self.task.name, score=self.task.score)
        skipped = 0
        # the bare model: DDP's forward may communicate, and ranks see unequal shards
        model = unwrap_model(self.model)
        for batch in progress(
            val_loader(self.val_ds, self.cfg),
            disable=not self.main,
            desc="validation",
            unit="batch",
        ):
            skipped += len(batch["skipped"])
            for path, reason in batch["skipped"]:
                if path not in self.val_skipped_said:  # said once, not every epoch
                    self.val_skipped_said.add(path)
                    log.warning("validation: skipped %s: %s", path, reason)
            if batch["count"] == 0:
                continue
            batch = self._to_device(batch)
            outputs = self.task.val_outputs(lambda x: self._forward(x, model), batch)
            on_cpu = {k: _cpu(v) for k, v in batch.items()}
            self.task.eval_update(evaluator, outputs, on_cpu)
            self.task.threshold_update(collector, outputs, on_cpu)
        shards = dist.gather_objects((evaluator, collector))
        merged, thresholds = shards[0]
        for other, other_collector in shards[1:]:
            merged.merge(other)
            thresholds.merge(other_collector)
        metrics = merged.compute()
        # chosen on every validation; stored with best.pt when this epoch is the best
        self.val_thresholds = thresholds.choose(Path(str(self.cfg["val_list"])).stem)
        metrics["skipped_samples"] = dist.sum_int(skipped, self.device)
        return metrics

    # -- the run
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        history: dict[str, Any] = {}
        run_log = (
            RunLog(self.out, self.task, cfg["tensorboard"], resumed=self.start_epoch > 0)
            if self.main
            else None
        )
        if self.start_epoch >= cfg["epochs"] and self.main:
            log.warning(
                "nothing to train: the run resumed has finished its %d epochs (--epochs %d); "
                "a larger --epochs trains on, its learning-rate schedule stretched to the "
                "new length",
                self.start_epoch,
                cfg["epochs"],
            )
        try:
            for epoch in range(self.start_epoch, cfg["epochs"]):
                stats = self.train_epoch(epoch)
                # BatchNorm statistics drift apart per process during the epoch; every
                # process continues (and validates) with rank 0's, the ones it saves.
                dist.broadcast_buffers(unwrap_model(self.model))
                metrics = self.validate() if self.val_ds is not None else {}
                history = {"epoch": epoch + 1, **stats, "val": _scalars(metrics)}
                improved = self._track_best(metrics)
                if run_log is not None:
                    run_log.write(history)
                    state = self._state(epoch)
                    save_checkpoint(self.out / "checkpoints" / "last.pt", state)
                    if improved:
                        best = best_checkpoint(state)
                        if metrics and self.val_thresholds is not None:
                            best["thresholds"] = self.val_thresholds.to_dict()
                            log.info("best.pt: %s", _thresholds_line(self.val_thresholds))
                        save_checkpoint(self.out / "checkpoints" / "best.pt", best)
                dist.barrier()
        finally:
            if run_log is not None:
                run_log.close()
        return history

    def _track_best(self, metrics: dict[str, Any]) -> bool:
        if not metrics or self.cfg["best_metric"] == LATEST_EPOCH:
            return True  # no validation, or asked for: the latest is best.pt
        value = metrics[self.cfg["best_metric"]]  # checked before the run (train_checks)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.best_score is None
        if self.best_score is None or value > self.best_score:
            self.best_score = float(value)
            return True
        return False


# Settings a resumed run may change without changing what it trains: where and how fast
# it runs, what it logs, how it validates. (epochs is not one: a cosine schedule
# stretches to the new length.)
FREE_ON_RESUME = frozenset(
    {
        "resume",
        "out_dir",
        "val_list",
        "val_size",
        "best_metric",
        "device",
        "amp",
        "channels_last",
        "workers",
        "tensorboard",
        "max_nonfinite",
        "ddp_find_unused_parameters",
        "init",
        "pretrained_base",
        "model",
        "task",
    }
)


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key old → new`` for each setting a resume changes that shapes the training
    (data, augmentation, losses, optimiser, seed), so it is said rather than silent."""
    return [
        f"{key} {saved[key]!r} → {now[key]!r}"
        for key in sorted(saved)
        if key not in FREE_ON_RESUME and key in now and saved[key] != now[key]
    ]


def _thresholds_line(chosen: ChosenThresholds) -> str:
    calibrated = ", image scores calibrated" if chosen.calibration else ""
    return f"thresholds {chosen.values() or 'none'} {chosen.describe()}{calibrated}"


def _cpu(v: Any) -> Any:
    return v.cpu() if isinstance(v, torch.Tensor) else v


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) or v is None}


def train(cfg: dict[str, Any], make_task: Callable[[dict[str, Any]], Task]) -> dict[str, Any]:
    """Train with ``cfg`` (a resolved config dict) the task ``make_task(cfg)`` builds;
    returns the last epoch's log row. Config values are checked before the task is built,
    inputs and the output folder before the run starts (:class:`UsageError`)."""
    check_values(cfg)
    task = make_task(cfg)
    check_config(cfg, task.new_evaluator())
    try:
        return Trainer(cfg, task).fit()
    finally:
        dist.shutdown()
