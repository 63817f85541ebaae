"""Run by tests/test_ddp.py under torchrun: training scenarios through the three
scripts' own ``main``. After each run every rank writes a digest of its weights and
buffers, so the test can check that the processes ended identical.

Usage: ddp_worker.py SCENARIOS_JSON — a list of {"name", "script", "argv", "out",
"nan_rank", "nan_step"}; ``nan_rank``/``nan_step`` (optional) make that rank's training
loss non-finite at that forward, to check that a step skipped on one rank is skipped on
all.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

import torch

from common.core import distributed as dist
from common.training.engine import Trainer
from models import unwrap_model


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name and bytes, in key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(scenario: dict) -> None:
    out = Path(scenario["out"])
    real_fit, real_forward = Trainer.fit, Trainer._forward
    calls = {"n": 0}

    def fit_and_record(self: Trainer) -> dict:
        history = real_fit(self)
        model = unwrap_model(self.model)
        result = {
            "digest": state_digest(model.state_dict()),
            "world": dist.world_size(),
            "history": history,
        }
        (out / f"rank{dist.rank()}.json").write_text(json.dumps(result))
        return history

    def forward_maybe_nan(self: Trainer, images: torch.Tensor, model=None):
        outputs = real_forward(self, images, model)
        if model is None and self.model.training:  # a training forward
            step, calls["n"] = calls["n"], calls["n"] + 1
            if dist.rank() == scenario.get("nan_rank") and step == scenario.get("nan_step"):
                outputs = type(outputs)(*(o * float("nan") for o in outputs))
        return outputs

    Trainer.fit = fit_and_record
    Trainer._forward = forward_maybe_nan
    try:
        module = importlib.import_module(scenario["script"])
        module.main([*scenario["argv"], "--out_dir", str(out)])
    finally:
        Trainer.fit, Trainer._forward = real_fit, real_forward


def main() -> None:
    # one process group for all scenarios: the engine uses a group it did not start and
    # leaves it open
    torch.distributed.init_process_group(backend="gloo")
    try:
        for scenario in json.loads(Path(sys.argv[1]).read_text()):
            run(scenario)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
