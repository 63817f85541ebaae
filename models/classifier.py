"""Image-level classification variant of MVSS-Net (the seed's).

``head="max"``: the image score is the global max of sigmoid(seg) (for a multi-class
seg head: of 1 − softmax background); no new parameters, so official localisation
weights load with ``strict=True``. ``head="linear"``: a learned layer on the globally
average-pooled fused features gives logits over 2 or 3 image classes.
"""

from __future__ import annotations

import torch
from torch import nn

from models.mvssnet import MVSSNet
from models.outputs import MVSSClsOutput
from models.weights import init_backbones_from_imagenet

CLS_HEADS = ("max", "linear")


def manipulation_score(seg_logits: torch.Tensor) -> torch.Tensor:
    """Per-image score in [0, 1]: global max of the manipulated-probability map."""
    if seg_logits.shape[1] == 1:
        prob = torch.sigmoid(seg_logits[:, 0])
    else:
        prob = 1.0 - torch.softmax(seg_logits, dim=1)[:, 0]
    return prob.amax(dim=(1, 2))


class MVSSNetCls(MVSSNet):
    """MVSS-Net whose ``forward`` returns ``(edge_logits, seg_logits, cls)``.

    ``cls`` is a probability per image (N,) with ``head="max"``, logits
    (N, num_image_classes) with ``head="linear"``.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        nclass: int = 1,
        sobel: bool = True,
        constrain: bool = True,
        n_input: int = 3,
        head: str = "max",
        num_image_classes: int = 2,
    ) -> None:
        super().__init__(backbone, nclass, sobel, constrain, n_input, aux=False)
        if head not in CLS_HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(CLS_HEADS)}")
        self.head_type = head
        if head == "linear":
            if num_image_classes not in (2, 3):
                raise ValueError(f"num_image_classes must be 2 or 3, got {num_image_classes}")
            self.image_head = nn.Linear(self.head.inter_channels, num_image_classes)

    def forward(self, x: torch.Tensor) -> MVSSClsOutput:  # type: ignore[override]
        out = self.forward_features(x)
        if self.head_type == "linear":
            cls = self.image_head(out["fused"].mean(dim=(2, 3)))
        else:
            cls = manipulation_score(out["seg"])
        return MVSSClsOutput(out["edge"], out["seg"], cls)


def get_mvss_cls(
    backbone: str = "resnet50",
    nclass: int = 1,
    sobel: bool = True,
    constrain: bool = True,
    n_input: int = 3,
    pretrained_base: str | None = None,
    head: str = "max",
    num_image_classes: int = 2,
) -> MVSSNetCls:
    """Build the classification network (same keys as MVSS-Net, plus ``image_head``
    when ``head="linear"``)."""
    net = MVSSNetCls(backbone, nclass, sobel, constrain, n_input, head, num_image_classes)
    init_backbones_from_imagenet(net, pretrained_base)
    return net
