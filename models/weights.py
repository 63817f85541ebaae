"""Loading weights safely: official checkpoints, our checkpoints, ImageNet backbones.

Nothing here unpickles arbitrary objects: ``.pth``/``.pt`` go through
``torch.load(weights_only=True)``, ``.safetensors`` through safetensors.
"""

from __future__ import annotations

import copy
import functools
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# Prefixes added by wrappers: DataParallel/DDP (module.), torch.compile (_orig_mod.).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")
_MAX_NAMES = 10


class WeightsError(RuntimeError):
    """A weight file that cannot be read or does not fit the model. ``path`` and
    ``reason`` are kept apart, so callers can word their own message without parsing
    this one."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class LoadReport:
    """What a (non-strict) load left out."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        parts = []
        for label, names in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mis-shaped", self.mismatched),
        ):
            if names:
                shown = ", ".join(names[:_MAX_NAMES])
                more = f" … (+{len(names) - _MAX_NAMES} more)" if len(names) > _MAX_NAMES else ""
                parts.append(f"{len(names)} {label} keys: {shown}{more}")
        return "; ".join(parts) or "all keys match"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file and return a flat, unwrapped ``name → tensor`` dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "no such weight file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: object = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises several error types
            raise WeightsError(path, f"not a readable safetensors file ({exc})") from exc
    else:
        raw = load_torch_file(path)
    return _unwrap(raw, path)


def _file_head(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(2)


def _is_zip_archive(path: Path) -> bool:
    return _file_head(path) == b"PK"


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (``PK``); legacy files are pickles (0x80)."""
    head = _file_head(path)
    return head == b"PK" or head[:1] == b"\x80"


def load_torch_file(path: str | Path, mapped: bool = False) -> object:
    """``torch.load(weights_only=True)``: plain data and tensors only, no code runs; any
    failure is a :class:`WeightsError` saying why in plain words. ``mapped``: tensors
    are mapped from the file, not read, where its format allows (torch.save's zip
    archives): for callers that want the plain data beside the tensors."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise WeightsError(path, "empty file, not a weight file")
    if mapped and _is_zip_archive(path):
        try:
            return _torch_load(path, mmap=True)
        except Exception:  # a file system that cannot map it: read it as below
            pass
    try:
        return _torch_load(path, mmap=False)
    except Exception as exc:
        # arbitrary bytes fail in arbitrary ways (text raises KeyError inside the unpickler)
        if not _looks_like_torch_file(path):
            reason = "not a PyTorch weight file (neither a zip archive nor a pickle)"
        elif isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
            reason = "refused: it holds code or objects other than tensors (nothing was run)"
        else:
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            reason = f"not a readable PyTorch weight file ({type(exc).__name__}: {first_line})"
        raise WeightsError(path, f"{reason}") from exc


def _torch_load(path: Path, mmap: bool) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pickle-protocol chatter
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _unwrap(raw: object, path: Path) -> dict[str, torch.Tensor]:
    state = raw
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if not isinstance(state, Mapping):
            break
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            break
        nested = next((k for k in _NESTED_KEYS if isinstance(state.get(k), Mapping)), None)
        if nested is None:
            break
        state = state[nested]
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(path, f"no state dict found (got {type(raw).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:_MAX_NAMES]
        raise WeightsError(path, f"entries that are not tensors: {', '.join(map(str, bad))}")
    return drop_stage_aliases({_strip_prefixes(k): v for k, v in tensors.items()}, path)


# The seed's ResNet wrapper also lists the four stages in an nn.ModuleList ``blocks``, so
# its checkpoints hold every stage twice: ``[noise_extractor.]blocks.i.*`` next to
# ``[noise_extractor.]model.layer{i+1}.*``.
_STAGE_ALIAS = re.compile(r"^((?:noise_extractor\.)?)blocks\.([0-3])\.(.+)$")


def drop_stage_aliases(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Remove the seed's ``blocks.*`` alias keys after checking that each equals the stage
    tensor it aliases (an alias alone is renamed to its stage key). A real difference is
    an error naming the key: the file is then not what it claims to be."""
    out = {}
    for key, value in state.items():
        match = _STAGE_ALIAS.match(key)
        if match is None:
            out.setdefault(key, value)
            continue
        prefix, index, rest = match.groups()
        target = f"{prefix}model.layer{int(index) + 1}.{rest}"
        original = state.get(target)
        if original is None:
            out[target] = value
        elif original.shape != value.shape or not torch.equal(original, value):
            raise WeightsError(
                path,
                f"{key} should be a copy of {target} (the seed's stage alias) but "
                "differs from it; the file is inconsistent",
            )
    return out


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def compare_state_dicts(
    model_state: Mapping[str, torch.Tensor], loaded: Mapping[str, torch.Tensor]
) -> LoadReport:
    """Which keys are missing, unexpected or of another shape."""
    return LoadReport(
        missing=[k for k in model_state if k not in loaded],
        unexpected=[k for k in loaded if k not in model_state],
        mismatched=[
            f"{k} (file {tuple(loaded[k].shape)}, model {tuple(v.shape)})"
            for k, v in model_state.items()
            if k in loaded and loaded[k].shape != v.shape
        ],
    )


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load weights from ``path`` into ``model`` (unwrapped of DDP/compile wrappers).

    Accepts a bare state dict (the official format), our checkpoints, dicts wrapping the
    weights under ``state_dict``/``model``, and ``module.``-prefixed keys. With
    ``strict=True`` any missing, unexpected or mis-shaped key raises :class:`WeightsError`
    naming them; otherwise the matching keys are loaded and the report is returned.
    """
    target = unwrap_model(model)
    loaded = read_state_dict(path)
    report = compare_state_dicts(target.state_dict(), loaded)
    if strict and not report.ok:
        raise WeightsError(path, f"weights do not fit the model: {report.describe()}")
    bad_shape = {m.split(" ", 1)[0] for m in report.mismatched}
    usable = {k: v for k, v in loaded.items() if k not in bad_shape and k not in report.unexpected}
    target.load_state_dict(usable, strict=False)
    if not report.ok:
        warnings.warn(f"{path}: partial load: {report.describe()}", stacklevel=2)
    return report


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP/DataParallel or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


_RANDOM_INIT_WARNING = (
    "MVSS-Net backbones are randomly initialised (no pretrained_base given): "
    "training from scratch needs far more data and time; pass a local torchvision-format "
    "ImageNet ResNet state dict for useful accuracy."
)


def init_backbones_from_imagenet(net: nn.Module, path: str | Path | None) -> None:
    """Initialise the RGB and noise ResNets from a local torchvision-format state dict."""
    if path is None:
        warnings.warn(_RANDOM_INIT_WARNING, stacklevel=3)
        return
    state = read_state_dict(path)
    backbones = [net.model]
    if getattr(net, "noise_extractor", None) is not None:
        backbones.append(net.noise_extractor.model)
    for backbone in backbones:
        own = backbone.state_dict()
        report = compare_state_dicts(own, state)
        if report.missing or report.mismatched:
            # conv1 may differ (e.g. n_input ≠ 3); anything else means a wrong file.
            serious = [k for k in report.missing if not k.startswith("conv1.")]
            if serious or any(not m.startswith("conv1.") for m in report.mismatched):
                raise WeightsError(path, f"not weights for this backbone: {report.describe()}")
        usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
        backbone.load_state_dict(usable, strict=False)


# The plain-data entries our checkpoints carry beside the weights.
METADATA_KEYS = ("config", "thresholds")


@functools.lru_cache(maxsize=8)
def _metadata(path: str, mtime_ns: int, size: int) -> dict[str, dict]:
    """A checkpoint's plain-data entries, read once per file version: a command asks
    for its description and its thresholds before loading the weights, and a large
    checkpoint should not be read three times for that. Its tensors are mapped, not
    read (a ResNet-50 training checkpoint is 0.6–1.8 GB)."""
    try:
        raw = load_torch_file(Path(path), mapped=True)
    except WeightsError:
        return {}
    if not isinstance(raw, Mapping):
        return {}
    return {k: dict(raw[k]) for k in METADATA_KEYS if isinstance(raw.get(k), Mapping)}


def read_checkpoint_entry(path: str | Path, key: str) -> dict:
    """The plain-data entry ``key`` of one of our checkpoints ({} when there is none:
    official files, safetensors, unreadable files)."""
    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file():
        return {}
    stat = path.stat()
    entry = _metadata(str(path.resolve()), stat.st_mtime_ns, stat.st_size).get(key, {})
    return copy.deepcopy(entry)  # the cached copy stays as it was read


def read_checkpoint_config(path: str | Path) -> dict:
    """The plain-data ``config`` stored in our checkpoints ({} for official files)."""
    return read_checkpoint_entry(path, "config")
