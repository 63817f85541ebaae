"""MVSS-Net models: the public face of the package."""

from models.backbone import BACKBONES, build_resnet
from models.classifier import MVSSNetCls, get_mvss_cls, manipulation_score
from models.mvssnet import MVSSNet, get_mvss
from models.outputs import ModelOutput, MVSSClsOutput, MVSSOutput
from models.weights import (
    LoadReport,
    WeightsError,
    load_weights,
    read_checkpoint_config,
    read_state_dict,
    unwrap_model,
)

__all__ = [
    "BACKBONES",
    "LoadReport",
    "MVSSClsOutput",
    "MVSSNet",
    "MVSSNetCls",
    "MVSSOutput",
    "ModelOutput",
    "WeightsError",
    "build_resnet",
    "get_mvss",
    "get_mvss_cls",
    "load_weights",
    "manipulation_score",
    "read_checkpoint_config",
    "read_state_dict",
    "unwrap_model",
]
