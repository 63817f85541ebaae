"""Train the MVSS-Net image classifier on fixed-size crops (configs/train_demo_cls.yaml).

Every option of the YAML config is also a command-line option; --config FILE layers a
file over the defaults. One device: `python train_demo_cls.py --train_list L --val_list V`;
several: `torchrun --nproc_per_node N train_demo_cls.py ...` (DDP).
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.core.user_errors import run_cli, setup_logging
from common.training.config import parse_config, read_defaults
from common.training.engine import train
from common.training.tasks import ClassificationTask

DEFAULTS = Path(__file__).resolve().parent / "configs" / "train_demo_cls.yaml"


def run(argv: list[str]) -> int:
    setup_logging()
    defaults, comments = read_defaults(DEFAULTS)
    cfg = parse_config(defaults, __doc__.splitlines()[0], argv, comments)
    train(cfg, ClassificationTask)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit code 0 when training finished, 2 for a user error (one line on stderr)."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
