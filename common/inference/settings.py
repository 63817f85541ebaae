"""How to run a checkpoint: its own description, the typed settings a user picks, and the
one loader every script, the benchmark and the server use.

Why one place: "is it a classifier?", the ``resnet50`` fallback for official files, what
``--int8`` implies and "the fast path stores bf16 weights itself, so autocast is off"
used to be decided separately by each command; now each is decided here once.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.accel.fast_path import WINOGRAD_TILE, optimize_for_inference
from common.accel.int8_cache import (
    BUNDLED,
    DEFAULT_CALIBRATION_IMAGES,
    INT8_MIN_GAIN,
    int8_model,
)
from common.core.release import RELEASE_SIZE, TILE_STRIDE
from common.core.runtime import device_of, full_fp32_on_cuda, native_bf16
from common.core.scores import NOT_PRISTINE, classifier_score_rule, score_rule
from common.core.user_errors import UsageError, clip, require_file
from common.data.masks import CLASSIFIER_DESENSITISED
from common.inference.single_image import RunOptions
from models import WeightsError, get_mvss, get_mvss_cls, load_weights, read_checkpoint_config

DEFAULT_BACKBONE = "resnet50"  # the release's; official files carry no description


@dataclass(frozen=True)
class CheckpointDescription:
    """What a checkpoint says about the network it holds (official files say nothing:
    a binary ResNet-50 MVSS-Net, the release's)."""

    task: str = "localization"
    backbone: str = DEFAULT_BACKBONE
    nclass: int = 1
    head: str = "max"  # classifier only
    num_image_classes: int = 2  # classifier only
    # classifier only: what its training took a desensitised-only image for (its score
    # follows it where no evaluation says otherwise: the web app)
    desensitised: str = CLASSIFIER_DESENSITISED
    # classifier only: the crop size it was trained on (validation chose its threshold
    # on crops of it), None when it trained on resized images or says nothing
    crop: int | None = None
    # classifier only: the side of the whole, resized images it trained and validated on
    # (``crop: false``), None when it trained on crops or says nothing
    resized: int | None = None
    described: bool = False  # False: no description stored (official files): defaults

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"


def describe_checkpoint(path: str | Path) -> CheckpointDescription:
    """The description stored in one of our checkpoints, or the release's defaults."""
    config = read_checkpoint_config(path)
    if not config:
        return CheckpointDescription()
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    classifier = config.get("task") == "classification" or "head" in model
    nclass = int(model.get("nclass", 1))
    task = "three_class" if nclass == 3 else "localization"
    if classifier:
        task = "classification"
    return CheckpointDescription(
        task=task,
        backbone=str(model.get("backbone", DEFAULT_BACKBONE)),
        nclass=nclass,
        head=str(model.get("head", "max")),
        num_image_classes=int(model.get("num_image_classes", 2)),
        desensitised=str(config.get("desensitised", CLASSIFIER_DESENSITISED)),
        crop=int(config["size"]) if config.get("crop") and config.get("size") else None,
        resized=_trained_resize(config) if classifier else None,
        described=True,
    )


def _trained_resize(config: dict) -> int | None:
    """The validation side of a run that resized whole images (``crop: false``; its
    ``val_size``, else ``size``), or None."""
    if config.get("crop") is not False or not config.get("size"):
        return None
    return int(config.get("val_size") or config["size"])


def run_score_rule(checkpoint: str | Path | None, task: str, desensitised: str | None) -> str:
    """What a run's maps or image scores are (:func:`common.core.scores.score_rule`) for
    ``checkpoint`` run as ``task`` under the ``desensitised`` policy (None: the run has
    none; a classifier then follows its training's, as the web app does). The
    three-class script's merged map is 1 − P(pristine) whatever the policy."""
    if task == "three_class" or not checkpoint:
        return NOT_PRISTINE
    description = describe_checkpoint(checkpoint)
    if task == "classification":
        return classifier_score_rule(
            description.head,
            description.num_image_classes,
            desensitised or description.desensitised,
        )
    return score_rule(description.nclass, desensitised)


@dataclass(frozen=True)
class ModelSpec:
    """How to run a network: precision, the fast path and its parts, int8.

    ``int8`` is the fast path (bf16, channels_last, Winograd head) with the RGB
    backbone's last two stages in int8; :meth:`resolved` switches those parts on."""

    amp: str = "off"  # off | fp16 | bf16 | auto
    fast: bool = False
    winograd: int | None = None  # Winograd tile with the fast path, None: off
    channels_last: bool = False
    int8: bool = False
    int8_calibration: str = BUNDLED
    int8_images: int = DEFAULT_CALIBRATION_IMAGES
    int8_cache: Path | None = None
    int8_min_gain: float = INT8_MIN_GAIN
    int8_size: int = RELEASE_SIZE  # the input side int8 is calibrated and timed at
    backbone: str | None = None  # overrides the checkpoint's description
    head: str | None = None  # classifier head, overrides the checkpoint's

    def resolved(self, device: str | torch.device = "cpu") -> ModelSpec:
        """The settings as they will run on ``device``: ``auto`` precision picked,
        ``int8``'s parts switched on, combinations that cannot run refused."""
        spec = self
        device_name = str(device)
        if spec.amp == "auto":
            spec = dataclasses.replace(spec, amp=auto_precision(device_name))
        if spec.int8:
            if not device_name.startswith(("cpu", "auto")):
                raise UsageError("the int8 path runs on x86 CPUs only", f"--device {device_name}")
            if spec.amp not in ("off", "bf16"):
                raise UsageError(
                    "the int8 path computes its other layers in bf16", f"--amp {spec.amp}"
                )
            spec = dataclasses.replace(
                spec,
                amp="bf16",
                fast=True,
                channels_last=True,
                winograd=spec.winograd or WINOGRAD_TILE,
            )
        if spec.winograd and not spec.fast:
            raise UsageError("--winograd is part of the fast path", "--winograd", "add --fast")
        return spec

    @property
    def autocast_amp(self) -> str:
        """The autocast mode around the forward: off where the fast path already holds
        bf16 weights (it casts its own inputs)."""
        return "off" if self.fast and self.amp == "bf16" else self.amp


def auto_precision(device: str) -> str:
    """``--amp auto`` for inference: fp16 on CUDA, bf16 on CPUs that compute it natively
    (AVX-512 BF16 / AMX), else fp32 (emulated bf16 is slower than fp32)."""
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "fp16"
    return "bf16" if native_bf16() else "off"


def run_options(
    spec: ModelSpec,
    device: str = "auto",
    tile: int = RELEASE_SIZE,
    tile_stride: int = TILE_STRIDE,
    tile_batch: int = 4,
    blend: str = "weighted",
) -> RunOptions:
    """How inference calls a model loaded with ``spec`` (which must be resolved); the
    int8 path runs on the CPU whatever ``auto`` would find."""
    return RunOptions(
        device=device_of("cpu" if spec.int8 else device, spec.amp),
        amp=spec.autocast_amp,
        channels_last=spec.channels_last,
        tile=tile,
        tile_stride=tile_stride,
        tile_batch=tile_batch,
        blend=blend,
    )


def _build(description: CheckpointDescription, spec: ModelSpec, classifier: bool) -> nn.Module:
    backbone = spec.backbone or description.backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-init warning: weights follow
        if classifier:
            return get_mvss_cls(
                backbone=backbone,
                nclass=description.nclass,
                head=spec.head or description.head,
                num_image_classes=description.num_image_classes,
            )
        return get_mvss(backbone=backbone, nclass=description.nclass)


def load_model(
    path: str | Path | None,
    device: torch.device,
    spec: ModelSpec | None = None,
    task: str | None = None,
    int8_cache_dir: str | Path = ".",
) -> nn.Module:
    """The network a checkpoint holds, loaded strictly and made ready as ``spec`` says
    (``spec`` resolved first). ``task`` is what the command runs: ``classification``
    builds the classifier (official weights load into its max head too),
    ``three_class`` needs 3-class maps, None follows the checkpoint's description. A
    checkpoint that is missing, unreadable, unsafe or of another network is a
    :class:`UsageError`."""
    if not path:
        raise UsageError("a checkpoint is required", "--model_path")
    path = require_file(path, "checkpoint", "--model_path")
    spec = (spec or ModelSpec()).resolved(device)
    if spec.amp == "off":  # fp32 means fp32 on a GPU too (the API's maps = the scripts')
        full_fp32_on_cuda(device)
    description = describe_checkpoint(path)
    if task == "three_class" and not description.described:  # let the weights decide
        description = dataclasses.replace(description, task=task, nclass=3)
    if task == "three_class" and description.nclass != 3:
        raise UsageError(
            f"this checkpoint gives {description.nclass}-class maps; this script needs 3",
            f"--model_path {path}",
        )
    classifier = description.is_classifier if task is None else task == "classification"
    net = _build(description, spec, classifier)
    try:
        load_weights(net, path, strict=True)
    except WeightsError as exc:
        raise UsageError(
            f"cannot use this checkpoint: {clip(exc.reason)}", f"--model_path {path}"
        ) from exc
    net.eval().to(device)
    if spec.int8:
        cache = spec.int8_cache or Path(int8_cache_dir) / "int8_calibration.pt"
        return int8_model(
            net,
            path,
            spec.int8_calibration,
            spec.int8_images,
            spec.int8_size,
            cache,
            spec.int8_min_gain,
            spec.winograd,  # resolved: int8 always has its tile
        )
    if spec.fast:
        dtype = torch.bfloat16 if spec.amp == "bf16" else torch.float32
        return optimize_for_inference(
            net,
            dtype,
            spec.channels_last,
            winograd=bool(spec.winograd),
            winograd_tile=spec.winograd or WINOGRAD_TILE,
        ).to(device)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net
