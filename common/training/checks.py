"""Checks of a resolved training config, before anything is built or written.

A value out of range, a missing file or an option that does not fit the task is a
:class:`~common.core.user_errors.UsageError` naming the option, so a run never stops after
minutes of work (or halfway through writing its folder) on a typo.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.core.runtime import TRAIN_AMP_MODES, device_of
from common.core.user_errors import UsageError, require_file, require_writable_dir
from common.data.masks import DESENSITISED_POLICIES, MASK_SIZE_POLICIES
from common.data.transforms import ONE_OF_CHOICES
from models import BACKBONES

_PROBABILITIES = (
    "hflip",
    "vflip",
    "one_of_p",
    "median_blur_p",
    "jpeg_p",
    "blur_p",
    "noise_p",
    "rescale_p",
    "min_lr_ratio",
)
_POSITIVE_INTS = (
    "epochs",
    "batch_size",
    "accumulate",
    "step_epochs",
    "edge_thickness",
    "min_region_pixels",
)
_NON_NEGATIVE_INTS = ("workers", "warmup_steps", "max_steps_per_epoch", "max_nonfinite")
_NON_NEGATIVE_NUMBERS = (
    "weight_decay",
    "clip_grad",
    "pixel_bce",
    "seg_weight",
    "edge_weight",
    "ce_weight",
)
_CHOICES: dict[str, tuple[Any, ...]] = {
    "backbone": BACKBONES,
    "optimizer": ("adam", "adamw", "sgd"),
    "scheduler": ("cosine", "step", "none"),
    "amp": TRAIN_AMP_MODES,
    "desensitised": DESENSITISED_POLICIES,
    "mask_size_policy": MASK_SIZE_POLICIES,
    "head": ("max", "linear"),
    "num_image_classes": (2, 3),
}
# best_metric: last: best.pt is the latest epoch (still validated; its thresholds are chosen
# there), for schedules that anneal to the end of a short run, where a small validation
# set is noisier than the differences between the last epochs.
LATEST_EPOCH = "last"
_BOOLEANS = ("crop", "channels_last", "tensorboard", "ddp_find_unused_parameters")
_FILES = {"pretrained_base": "ImageNet weights", "init": "checkpoint", "resume": "checkpoint"}


def _fail(key: str, expectation: str, value: Any) -> UsageError:
    return UsageError(
        f"{key} must be {expectation}, got {value!r}",
        f"--{key}",
        "or fix it in the --config file",
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_each(
    cfg: dict[str, Any], keys: tuple[str, ...], ok: Callable[[Any], bool], expectation: str
) -> None:
    for key in keys:
        if key in cfg and not ok(cfg[key]):
            raise _fail(key, expectation, cfg[key])


def _check_pair(cfg: dict[str, Any], key: str, low: float, high: float, ints: bool) -> None:
    value = cfg.get(key)
    if value is None:
        return
    kind = _is_int if ints else _is_number
    if not (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(kind(v) for v in value)
        and low <= value[0] <= value[1] <= high
    ):
        raise _fail(key, f"[low, high] with {low} ≤ low ≤ high ≤ {high}", value)


def check_values(cfg: dict[str, Any]) -> None:
    """Types and ranges of every option the three training configs share."""
    _check_each(cfg, _PROBABILITIES, lambda v: _is_number(v) and 0 <= v <= 1, "in [0, 1]")
    _check_each(cfg, _POSITIVE_INTS, lambda v: _is_int(v) and v >= 1, "an integer ≥ 1")
    _check_each(cfg, _NON_NEGATIVE_INTS, lambda v: _is_int(v) and v >= 0, "an integer ≥ 0")
    _check_each(cfg, _NON_NEGATIVE_NUMBERS, lambda v: _is_number(v) and v >= 0, "a number ≥ 0")
    _check_each(cfg, _BOOLEANS, lambda v: isinstance(v, bool), "true or false")
    for key, choices in _CHOICES.items():
        if key in cfg and cfg[key] not in choices:
            raise _fail(key, "one of " + ", ".join(map(str, choices)), cfg[key])
    _check_each(cfg, ("size",), lambda v: _is_int(v) and v >= 64, "an integer ≥ 64")
    _check_each(
        cfg,
        ("val_size",),
        lambda v: v is None or (_is_int(v) and v >= 64),
        "null or an integer ≥ 64",
    )
    _check_each(cfg, ("lr", "gamma"), lambda v: _is_number(v) and v > 0, "a number > 0")
    _check_each(cfg, ("seed",), _is_int, "an integer")
    _check_each(
        cfg, ("mask_threshold",), lambda v: _is_int(v) and 0 <= v <= 254, "an integer in 0..254"
    )
    _check_each(
        cfg,
        ("median_blur_limit",),
        lambda v: _is_int(v) and v >= 3 and v % 2 == 1,
        "an odd integer ≥ 3",
    )
    one_of = cfg.get("one_of", [])
    if not isinstance(one_of, list | tuple) or any(n not in ONE_OF_CHOICES for n in one_of):
        raise _fail("one_of", "a list of " + ", ".join(ONE_OF_CHOICES), one_of)
    _check_pair(cfg, "jpeg_quality", 1, 100, ints=True)
    _check_pair(cfg, "noise_var", 0, 255**2, ints=False)
    if "alpha" in cfg:
        alpha, beta = cfg["alpha"], cfg["beta"]
        if not (_is_number(alpha) and _is_number(beta) and alpha >= 0 and beta >= 0):
            raise _fail("alpha", "a number ≥ 0 (and beta too)", (alpha, beta))
        if alpha + beta > 1:
            raise _fail("alpha", "such that alpha + beta ≤ 1 (the edge weight is the rest)", alpha)


def check_files(cfg: dict[str, Any]) -> None:
    """Inputs that must exist, and an output folder that can be written."""
    if not cfg.get("train_list"):
        raise UsageError("a training source is required", "--train_list")
    for key in ("train_list", "val_list"):
        source = cfg.get(key)
        if source is not None and not isinstance(source, str):
            raise UsageError(
                f"expected one path (a list file, JSON list or folder), got {source!r}",
                f"--{key}",
            )
        if source and not Path(source).exists():
            raise UsageError("training data not found", f"--{key} {source}")
    root = cfg.get("data_root")
    if root is not None and not (isinstance(root, str) and Path(root).expanduser().is_dir()):
        raise UsageError("data root not found (or not a folder)", f"--data_root {root}")
    for key, what in _FILES.items():
        if cfg.get(key):
            require_file(cfg[key], what, f"--{key}")
    require_writable_dir(cfg["out_dir"], "--out_dir")


def check_best_metric(cfg: dict[str, Any], evaluator: Any) -> None:
    """``best_metric`` must be one of the task's validation metrics, or ``last``."""
    if not cfg.get("val_list") or cfg["best_metric"] == LATEST_EPOCH:
        return
    scalars = sorted(
        k for k, v in evaluator.compute().items() if v is None or isinstance(v, int | float)
    )
    if cfg["best_metric"] not in scalars:
        raise UsageError(
            f"best_metric {cfg['best_metric']!r} is not a validation metric of this task",
            "--best_metric",
            f"choose from {LATEST_EPOCH}, " + ", ".join(scalars),
        )


def check_config(cfg: dict[str, Any], evaluator: Any) -> None:
    """What needs the task (its metrics), the machine and the file system; the values
    themselves are :func:`check_values`'s."""
    device_of(cfg["device"], cfg["amp"])
    check_best_metric(cfg, evaluator)
    check_files(cfg)
