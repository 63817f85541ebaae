"""The one training loop the three training scripts share.

One process or many (torchrun → DDP, gloo on CPU, NCCL on CUDA); torch.amp mixed
precision; gradient accumulation and clipping; validation every epoch with every sample
counted once; atomic checkpoints (last + best) that resume exactly at epoch boundaries;
progress bars, JSONL/CSV logs and optional TensorBoard. Non-finite losses skip the step,
and too many in a row stop the run with a clear message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from common import distributed as dist
from common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from common.config import save_yaml
from common.datasets import ForgeryDataset, collate_samples
from common.masks import MaskOptions
from common.progress import progress
from common.reports import CsvLog
from common.runtime import autocast, to_memory_format
from common.sources import load_source
from common.train_checks import check_config, check_values
from common.transforms import AugmentConfig, build_eval_transform, build_train_transform
from common.usage import UsageError
from models import WeightsError, load_weights, unwrap_model
from models.weights import compare_state_dicts

log = logging.getLogger("mvss.train")


class Task(Protocol):
    name: str
    nclass: int

    def build_model(self, cfg: dict[str, Any]) -> nn.Module: ...
    def model_config(self, cfg: dict[str, Any]) -> dict[str, Any]: ...
    def loss(self, outputs: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...
    def new_evaluator(self) -> Any: ...
    def eval_update(self, evaluator: Any, outputs: Any, batch: dict[str, Any]) -> None: ...
    def eval_size(self, cfg: dict[str, Any]) -> int | None: ...
    def val_outputs(self, forward: Any, batch: dict[str, Any]) -> Any: ...


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses: the run stops rather than save NaNs."""


# ----------------------------------------------------------------------------- data


def _dataset(
    source: str, cfg: dict[str, Any], nclass: int, train: bool, eval_size: int | None = None
) -> ForgeryDataset:
    option = "--train_list" if train else "--val_list"
    records, problems = load_source(source)
    if not records:
        first = f"first: {problems[0]}" if problems else "the list or folder is empty"
        what = f"no usable samples ({len(problems)} bad rows)" if problems else "no samples"
        raise UsageError(what, f"{option} {source}", first)
    unlabelled = [r.image for r in records if r.label < 0]
    if unlabelled:
        raise UsageError(
            f"{len(unlabelled)} rows have no label (e.g. {unlabelled[0]})",
            f"{option} {source}",
            "training needs 'image mask label' rows (label 0 = authentic)",
        )
    if dist.is_main():
        for p in problems[:20]:
            log.warning("skipping %s", p)
        if len(problems) > 20:
            log.warning("… and %d more problems in %s", len(problems) - 20, source)
    masks = MaskOptions(
        nclass=nclass,
        threshold=cfg["mask_threshold"],
        edge_thickness=cfg["edge_thickness"],
        size_policy=cfg["mask_size_policy"],
        # binary tasks only: the three-class task keeps the classes
        desensitised=cfg.get("desensitised", "positive"),
    )
    if train:
        # training labels follow what the crop/resize kept of the manipulated region
        dataset = ForgeryDataset(
            records,
            build_train_transform(AugmentConfig.from_config(cfg)),
            masks,
            labels_from_content=True,
            min_region_pixels=cfg["min_region_pixels"],
        )
    else:
        dataset = ForgeryDataset(records, build_eval_transform(eval_size), masks)
    index, first_error = dataset.first_readable()
    if index is None:
        raise UsageError(
            f"none of the {len(records)} samples can be read", f"{option} {source}", first_error
        )
    return dataset


def _seed_worker(worker_id: int) -> None:
    """Each worker's numpy/random/albumentations streams follow the loader's seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def _seed_epoch(seed: int, epoch: int, rank: int, dataset: ForgeryDataset) -> torch.Generator:
    """Reseed everything at each epoch start so a resumed run repeats the same epochs."""
    s = seed * 100_003 + epoch * 1009 + rank
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    if dataset.transform is not None and hasattr(dataset.transform, "set_random_seed"):
        dataset.transform.set_random_seed(s % 2**32)
    return torch.Generator().manual_seed(s)


def _train_loader(ds: ForgeryDataset, cfg: dict[str, Any], epoch: int) -> DataLoader:
    g = _seed_epoch(cfg["seed"], epoch, dist.rank(), ds)
    if dist.world_size() > 1:
        sampler: Any = DistributedSampler(ds, shuffle=True, seed=cfg["seed"], drop_last=False)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(ds, generator=g)
    return DataLoader(
        ds,
        batch_size=cfg["batch_size"],
        sampler=sampler,
        num_workers=cfg["workers"],
        collate_fn=collate_samples,
        worker_init_fn=_seed_worker,
        generator=g,
        drop_last=False,
        pin_memory=torch.cuda.is_available(),
    )


def _val_loader(ds: ForgeryDataset, cfg: dict[str, Any]) -> DataLoader:
    full_size = ds.transform is None  # images of different sizes: one per batch
    return DataLoader(
        ds,
        batch_size=1 if full_size else cfg["batch_size"],
        sampler=dist.ShardSampler(len(ds)),
        num_workers=cfg["workers"],
        collate_fn=collate_samples,
    )


# ----------------------------------------------------------------------------- optimisation


def _optimizer(params: Iterable[nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD, fused where PyTorch has a fused kernel for the device: on CPU
    the default is a per-tensor Python loop, which for 147 M parameters costs a large
    fixed share of a small-batch step."""
    params = list(params)
    devices = {p.device.type for p in params}
    kwargs: dict[str, Any] = {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"]}
    if devices <= {"cpu", "cuda"} and len(devices) == 1:
        kwargs["fused"] = True
    name = cfg["optimizer"].lower()
    if name == "adam":
        return torch.optim.Adam(params, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if name == "sgd":
        return torch.optim.SGD(params, momentum=0.9, **kwargs)
    raise ValueError(f"optimizer must be adam, adamw or sgd; got {cfg['optimizer']!r}")


def lr_factor(step: int, cfg: dict[str, Any], steps_per_epoch: int, total_steps: int) -> float:
    """Learning-rate multiplier at an optimiser step: linear warm-up, then cosine to
    ``min_lr_ratio``, step decay every ``step_epochs``, or constant."""
    warm = cfg["warmup_steps"]
    if warm > 0 and step < warm:
        return (step + 1) / warm
    kind = cfg["scheduler"]
    if kind == "cosine":
        span = max(1, total_steps - warm)
        progress = min(1.0, (step - warm) / span)
        floor = cfg["min_lr_ratio"]
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "step":
        return cfg["gamma"] ** ((step // max(1, steps_per_epoch)) // max(1, cfg["step_epochs"]))
    if kind == "none":
        return 1.0
    raise ValueError(f"scheduler must be cosine, step or none; got {kind!r}")


def _freeze_unused(model: nn.Module) -> None:
    """The backbones' ``fc`` layers exist only for checkpoint compatibility; freezing them
    keeps DDP from waiting for gradients that never come."""
    for name, p in model.named_parameters():
        if name.endswith(("model.fc.weight", "model.fc.bias")):
            p.requires_grad_(False)


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
        self.train_ds = _dataset(cfg["train_list"], cfg, task.nclass, train=True)
        self.val_ds = (
            _dataset(cfg["val_list"], cfg, task.nclass, False, task.eval_size(cfg))
            if cfg.get("val_list")
            else None
        )
        torch.manual_seed(cfg["seed"])  # identical initial weights on every rank
        model = self._build_model()
        _freeze_unused(model)
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
        self.optimizer = _optimizer(params, cfg)
        batches = math.ceil(len(self.train_ds) / (cfg["batch_size"] * dist.world_size()))
        if cfg["max_steps_per_epoch"]:
            batches = min(batches, cfg["max_steps_per_epoch"])
        self.batches_per_epoch = batches
        self.steps_per_epoch = math.ceil(batches / cfg["accumulate"])
        total = self.steps_per_epoch * cfg["epochs"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg, self.steps_per_epoch, total)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg["amp"] == "fp16")
        self.start_epoch = 0
        self.best_score: float | None = None
        self.nonfinite_in_row = 0
        if cfg.get("resume"):
            self._resume(cfg["resume"])
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(self.out / "config.yaml", cfg)
        self.tb = self._tensorboard() if self.main else None

    def _build_model(self) -> nn.Module:
        """The task's network, from ``pretrained_base`` and ``init`` when given; weights
        that cannot be read, or that share nothing with the network, are user errors."""
        cfg = self.cfg
        try:
            model = self.task.build_model(cfg)
        except WeightsError as exc:
            reason = str(exc).split(": ", 1)[-1]
            raise UsageError(
                f"cannot use these ImageNet weights: {reason[:300]}",
                f"--pretrained_base {cfg['pretrained_base']}",
            ) from exc
        if cfg.get("init"):
            where = f"--init {cfg['init']}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the partial-load note: logged below
                    report = load_weights(model, cfg["init"], strict=False)
            except WeightsError as exc:
                reason = str(exc).split(": ", 1)[-1]
                raise UsageError(f"cannot read this checkpoint: {reason[:300]}", where) from exc
            fitted = len(model.state_dict()) - len(report.missing) - len(report.mismatched)
            if fitted == 0:
                raise UsageError(
                    "this checkpoint has no weights for this network", where, report.describe()
                )
            if self.main:
                level = logging.INFO if report.ok else logging.WARNING
                log.log(level, "initialised from %s (%s)", cfg["init"], report.describe())
        return model

    def _tensorboard(self) -> Any:
        if not self.cfg["tensorboard"]:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

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
            "config": {**self.cfg, "model": model_cfg, "task": self.task.name},
            "rng": rng_state(),
        }

    def _resume(self, path: str) -> None:
        """Continue from one of our checkpoints; one that cannot be read or that belongs
        to another network or run setup is a user error (nothing is written yet)."""
        where, hint = f"--resume {path}", "resume needs a last.pt of a run of this script"
        try:
            state = load_checkpoint(path)
        except WeightsError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            raise UsageError(f"cannot resume from this checkpoint: {reason}", where) from exc
        saved = state.get("config") if isinstance(state.get("config"), dict) else {}
        if saved.get("task") not in (None, self.task.name):
            raise UsageError(
                f"this checkpoint is of a {saved['task']!r} run, not {self.task.name!r}",
                where,
                hint,
            )
        model = unwrap_model(self.model)
        report = compare_state_dicts(model.state_dict(), state["model"])
        if not report.ok:
            raise UsageError(
                f"its weights do not fit this network: {report.describe()}",
                where,
                "same task, backbone and classes as the run it came from",
            )
        try:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.start_epoch = int(state["epoch"]) + 1
            self.best_score = state.get("best_score")
            set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UsageError(
                f"cannot resume from this checkpoint: {type(exc).__name__}: {first}",
                where,
                "same optimizer and options as the run it came from",
            ) from exc
        if self.main:
            log.info("resumed from %s at epoch %d", path, self.start_epoch)

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
        loader = _train_loader(self.train_ds, cfg, epoch)
        sums: dict[str, float] = {}
        seen = skipped = nonfinite = steps_done = 0
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
        for i, batch in enumerate(bar):
            if i >= self.batches_per_epoch:
                break
            skipped += len(batch["skipped"])
            for path, reason in batch["skipped"]:
                log.warning("skipped %s: %s", path, reason)
            if dist.any_true(batch["count"] == 0, self.device):
                continue  # a rank got no usable sample: all ranks skip together
            batch = self._to_device(batch)
            last_micro = (i + 1) % accumulate == 0 or i + 1 == self.batches_per_epoch
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
                    self._on_nonfinite()
                    nonfinite += 1
                    continue
                self.nonfinite_in_row = 0
                self.scaler.scale(loss / accumulate).backward()
            if first_micro:
                self._check_all_parameters_used()
            if last_micro:
                self._optimizer_step()
                steps_done += 1
            n = int(batch["count"])
            seen += n
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            rate = seen * dist.world_size() / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", img_s=f"{rate:.2f}")
        elapsed = time.perf_counter() - start
        stats = {f"train_{k}": v / max(seen, 1) for k, v in sums.items()}
        stats.update(
            lr=self.optimizer.param_groups[0]["lr"],
            images_per_second=dist.sum_int(seen, self.device) / max(elapsed, 1e-9),
            skipped_samples=dist.sum_int(skipped, self.device),
            nonfinite_steps=nonfinite,
            optimizer_steps=steps_done,
        )
        return stats

    def _check_all_parameters_used(self) -> None:
        """Every trainable parameter must have a gradient after a step's first backward:
        under DDP one that has none on some process puts the gradient reductions out of
        step, which gloo reports as a size mismatch and NCCL as a hang. Fail clearly
        instead (also in one-process runs, so the fault shows before a multi-GPU job)."""
        if self.find_unused:
            return
        missing = [name for name, p in self.trainable if p.grad is None]
        if missing:
            shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
            raise RuntimeError(
                f"{len(missing)} trainable parameters got no gradient in this step "
                f"({shown}): the loss must reach every parameter in every step (DDP "
                "requires it), or set ddp_find_unused_parameters: true"
            )

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
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @torch.inference_mode()
    def validate(self) -> dict[str, Any]:
        assert self.val_ds is not None
        self.model.eval()
        evaluator = self.task.new_evaluator()
        skipped = 0
        # the bare model: DDP's forward may communicate, and ranks see unequal shards
        model = unwrap_model(self.model)
        for batch in progress(
            _val_loader(self.val_ds, self.cfg),
            disable=not self.main,
            desc="validation",
            unit="batch",
        ):
            skipped += len(batch["skipped"])
            if batch["count"] == 0:
                continue
            batch = self._to_device(batch)
            outputs = self.task.val_outputs(lambda x: self._forward(x, model), batch)
            self.task.eval_update(evaluator, outputs, {k: _cpu(v) for k, v in batch.items()})
        shards = dist.gather_objects(evaluator)
        merged = shards[0]
        for other in shards[1:]:
            merged.merge(other)
        metrics = merged.compute()
        metrics["skipped_samples"] = dist.sum_int(skipped, self.device)
        return metrics

    # -- the run
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        history: dict[str, Any] = {}
        csv_log = (
            CsvLog(self.out / "log.csv", _LOG_FIELDS, append=self.start_epoch > 0)
            if self.main
            else None
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
                if self.main:
                    self._log(history, csv_log)
                    state = self._state(epoch)
                    save_checkpoint(self.out / "checkpoints" / "last.pt", state)
                    if improved:
                        save_checkpoint(self.out / "checkpoints" / "best.pt", state)
                dist.barrier()
        finally:
            if csv_log is not None:
                csv_log.close()
            if self.tb is not None:
                self.tb.close()
        return history

    def _track_best(self, metrics: dict[str, Any]) -> bool:
        if not metrics:
            return True  # no validation: the latest is the best we know
        key = self.cfg["best_metric"]
        if key not in metrics:
            valid = ", ".join(sorted(_scalars(metrics)))
            raise KeyError(f"best_metric {key!r} is not a validation metric; choose from {valid}")
        value = metrics[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.best_score is None
        if self.best_score is None or value > self.best_score:
            self.best_score = float(value)
            return True
        return False

    def _log(self, row: dict[str, Any], csv_log: CsvLog | None) -> None:
        with open(self.out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        flat = {k: v for k, v in row.items() if k != "val"}
        flat.update({f"val_{k}": v for k, v in row["val"].items()})
        if csv_log is not None:
            csv_log.write(flat)
        if self.tb is not None:
            for k, v in flat.items():
                if isinstance(v, int | float) and v is not None:
                    self.tb.add_scalar(k, v, row["epoch"])
        val = row["val"]
        shown = ", ".join(f"{k} {val[k]:.4f}" for k in _HEADLINE if isinstance(val.get(k), float))
        log.info(
            "epoch %d: loss %.4f, %.2f img/s, %d skipped samples%s",
            row["epoch"],
            row.get("train_loss", float("nan")),
            row["images_per_second"],
            row["skipped_samples"],
            f"; val {shown}" if shown else "",
        )


_LOG_FIELDS = (
    "epoch",
    "train_loss",
    "train_seg",
    "train_edge",
    "train_clf",
    "train_ce",
    "lr",
    "images_per_second",
    "skipped_samples",
    "nonfinite_steps",
    "optimizer_steps",
    "val_pixel_f1",
    "val_image_auc",
    "val_image_f1",
    "val_com_f1",
    "val_miou",
    "val_f1_tampered",
    "val_f1_desensitised",
    "val_auc",
    "val_accuracy",
    "val_f1",
)


_HEADLINE = (
    "pixel_f1",
    "image_auc",
    "image_f1",
    "com_f1",
    "miou",
    "f1_tampered",
    "f1_desensitised",
    "auc",
    "accuracy",
    "f1",
)


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
