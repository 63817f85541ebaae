"""MVSS-Net: RGB view with edge supervision + noise view, fused by dual attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import DAHead
from models.backbone import BACKBONES, build_resnet
from models.edge import edge_forward, edge_modules
from models.noise import BayarConv2d, NoiseExtractor, rgb_to_gray
from models.outputs import MVSSOutput
from models.weights import init_backbones_from_imagenet

EDGE_CHANNELS = 1  # edges of the union of manipulated classes, whatever nclass is


class MVSSNet(nn.Module):
    """The full network. ``forward(x)`` returns :class:`MVSSOutput` ``(edge, seg)`` logits.

    ``x`` is a normalised BGR batch (see README, input convention). Edge logits are at
    1/4 of the input size, seg logits at the input size; no sigmoid is applied.
    Attribute names follow the official checkpoint so it loads with ``strict=True``.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        nclass: int = 1,
        sobel: bool = True,
        constrain: bool = True,
        n_input: int = 3,
        aux: bool = False,
    ) -> None:
        super().__init__()
        if nclass < 1:
            raise ValueError(f"nclass must be ≥ 1, got {nclass}")
        if constrain and n_input < 3:
            raise ValueError("the noise branch needs a 3-channel (BGR) input; got n_input < 3")
        self.backbone_name = backbone
        self.nclass = nclass
        self.sobel = sobel
        self.constrain = constrain
        self.aux = aux
        # Registration order below reproduces the official state-dict key order.
        self.model = build_resnet(backbone, n_input)
        stage_channels = self.model.stage_channels
        for name, module in edge_modules(stage_channels, EDGE_CHANNELS, sobel).items():
            self.add_module(name, module)
        head_channels = stage_channels[-1]
        if constrain:
            self.noise_extractor = NoiseExtractor(backbone, in_channels=3)
            self.constrain_conv = BayarConv2d(1, 3, kernel_size=5, padding=2)
            head_channels *= 2
        self.head = DAHead(head_channels, nclass, aux=aux)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All outputs: ``edge``, ``seg`` (input size), ``fused`` features, aux maps."""
        size = x.shape[-2:]
        features = self.model(x)
        edge = edge_forward(self._modules, features, self.sobel)
        c4 = features[-1]
        if self.constrain:
            noise = self.noise_extractor(self.constrain_conv(rgb_to_gray(x)))
            c4 = torch.cat([c4, noise], dim=1)
        head = self.head(c4)
        result = {"edge": edge, "fused": head["fused"]}
        for key in ("seg", "aux_p", "aux_c"):
            if key in head:
                result[key] = F.interpolate(
                    head[key], size=size, mode="bilinear", align_corners=True
                )
        return result

    def forward(self, x: torch.Tensor) -> MVSSOutput:
        out = self.forward_features(x)
        return MVSSOutput(out["edge"], out["seg"])


def get_mvss(
    backbone: str = "resnet50",
    nclass: int = 1,
    sobel: bool = True,
    constrain: bool = True,
    n_input: int = 3,
    aux: bool = False,
    pretrained_base: str | None = None,
) -> MVSSNet:
    """Build MVSS-Net (the release's signature). ``pretrained_base`` is a local file of
    torchvision-format ImageNet ResNet weights; nothing is ever downloaded."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    net = MVSSNet(backbone, nclass, sobel, constrain, n_input, aux)
    init_backbones_from_imagenet(net, pretrained_base)
    return net
