"""Tiny generated data and checkpoints for end-to-end tests."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch


def make_tiny_dataset(
    root: Path,
    n_tampered: int = 3,
    n_authentic: int = 2,
    size=(72, 88),
    three_class: bool = False,
    corrupt: bool = True,
) -> Path:
    """Images with a bright pasted square (tampered) and plain ones; returns the list file."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    h, w = size
    for i in range(n_tampered + n_authentic):
        img = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
        name = f"img_{i:02d}.png"
        if i < n_tampered:
            mask = np.zeros((h, w), np.uint8)
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            mask[y : y + h // 3, x : x + w // 3] = 1
            if three_class:
                mask[h - h // 4 :, w - w // 4 :] = 2
            img[mask > 0] = 230
            cv2.imwrite(str(root / f"mask_{i:02d}.png"), mask if three_class else mask * 255)
            lines.append(f"{name} mask_{i:02d}.png 1")
        else:
            lines.append(f"{name} None 0")
        cv2.imwrite(str(root / name), img)
    if corrupt:
        (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        lines.insert(1, "corrupt.jpg None 0")
    list_file = root / "test.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return list_file


def make_tiny_checkpoint(
    path: Path, nclass: int = 1, cls_head: str | None = None, seed: int = 0
) -> Path:
    from models import get_mvss, get_mvss_cls

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cls_head:
            net = get_mvss_cls(backbone="resnet18", nclass=nclass, head=cls_head)
        else:
            net = get_mvss(backbone="resnet18", nclass=nclass)
    config = {"model": {"backbone": "resnet18", "nclass": nclass}}
    if cls_head:
        config["model"]["head"] = cls_head
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "config": config}, path)
    return path


def run_three_class_inference(model_path: Path, test_file: Path, save_dir: Path) -> int:
    """``infer_3labels_merge_calmetrics`` with 64-px tiles (stride 32) and no workers, as
    the tests run it on tiny images; returns the script's exit code."""
    import infer_3labels_merge_calmetrics

    return infer_3labels_merge_calmetrics.main(
        [
            "--model_path",
            str(model_path),
            "--test_file",
            str(test_file),
            "--save_dir",
            str(save_dir),
            "--tile",
            "64",
            "--tile-stride",
            "32",
            "--workers",
            "0",
        ]
    )


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run in-process work on ``n`` threads, as each torchrun rank (OMP_NUM_THREADS=1):
    CPU kernels may round (or even be chosen) differently for another thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
