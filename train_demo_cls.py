"""Train the MVSS-Net image classifier on fixed-size crops (configs/train_demo_cls.yaml).

Every option of the YAML config is also a command-line option; --config FILE layers a
file over the defaults. One device: `python train_demo_cls.py --train_list L --val_list V`;
several: `torchrun --nproc_per_node N train_demo_cls.py ...` (DDP).
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.cli import setup_logging
from common.config import parse_config, read_defaults
from common.engine import train
from common.tasks import ClassificationTask

DEFAULTS = Path(__file__).resolve().parent / "configs" / "train_demo_cls.yaml"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    defaults, comments = read_defaults(DEFAULTS)
    cfg = parse_config(defaults, __doc__.splitlines()[0], argv, comments)
    train(cfg, ClassificationTask(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
