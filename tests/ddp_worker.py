"""Run by tests/test_training.py under torchrun: one short DDP epoch, then each rank
writes a checksum of its weights and the validation count it saw."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import distributed as dist
from common.config import read_defaults
from common.engine import Trainer
from common.tasks import LocalizationTask


def main() -> None:
    list_file, out = sys.argv[1], Path(sys.argv[2])
    cfg, _ = read_defaults(Path(__file__).resolve().parents[1] / "configs" / "train_demo.yaml")
    cfg.update(
        train_list=list_file,
        val_list=list_file,
        backbone="resnet18",
        size=64,
        batch_size=2,
        epochs=1,
        workers=0,
        device="cpu",
        out_dir=str(out / "run"),
        max_steps_per_epoch=1,
        tensorboard=False,
    )
    trainer = Trainer(cfg, LocalizationTask(cfg))
    trainer.fit()
    metrics = trainer.validate()
    model = trainer.model.module
    checksum = sum(float(p.double().sum()) for p in model.parameters())
    result = {
        "checksum": checksum,
        "num_images": metrics["num_images"],
        "world": dist.world_size(),
        "moved": float(model.head.out[1].bias),
    }
    (out / f"rank{dist.rank()}.json").write_text(json.dumps(result))
    dist.shutdown()


if __name__ == "__main__":
    main()
