"""The official release's own model code (dong03/MVSS-Net, ``models/mvssnet.py``), built
offline with given weights, so benchmarks can time it side by side with ours.

Why a loader: the release's file imports torchvision (unused) and downloads ImageNet
weights while it builds (whatever ``pretrained_base`` says). For a benchmark we load it by
path under its own module name (so it never meets our ``models`` package), give it an
empty stand-in for torchvision when none is installed, and make its download return
nothing; then the same state dict as ours is loaded with ``strict=True``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import types
from pathlib import Path

import torch
from torch import nn

from common.core.user_errors import UsageError


def _load_module(path: Path) -> types.ModuleType:
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    spec = importlib.util.spec_from_file_location("mvss_release_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.model_zoo.load_url = lambda *a, **k: {}  # never download
    return module


def release_model(checkout: str | Path, ours: nn.Module) -> nn.Module:
    """The release's MVSS-Net (ResNet-50) holding ``ours``'s weights, in eval mode."""
    path = Path(checkout) / "models" / "mvssnet.py"
    if not path.is_file():
        raise UsageError(f"no models/mvssnet.py in {checkout}", f"--release-code {checkout}")
    module = _load_module(path)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints while building
        net = module.get_mvss(
            backbone="resnet50",
            pretrained_base=False,
            nclass=1,
            sobel=True,
            constrain=True,
            n_input=3,
        )
    try:
        net.load_state_dict(ours.state_dict(), strict=True)
    except RuntimeError as exc:
        raise UsageError(
            f"the release's model does not take these weights: {str(exc)[:200]}",
            "--release-code",
        ) from exc
    net.eval()
    with torch.inference_mode():  # its Bayar layer renormalises its kernel on first use
        net(torch.zeros(1, 3, 64, 64))
    return net
