"""Training data: datasets from lists, seeding, and the loaders (one module, so what a
sample is and how it is drawn read in one place).

Every epoch reseeds torch, numpy and random from (seed, epoch, rank), so a resumed run
draws the same samples as an uninterrupted one; each sample's augmentation is seeded by
(that epoch seed, the sample's index), so it is also the same whatever the number of
loader workers (``workers``: a setting that follows the machine, not the experiment).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from common.core import distributed as dist
from common.core.user_errors import UsageError
from common.data.datasets import ForgeryDataset, collate_samples
from common.data.masks import MaskOptions
from common.data.sources import load_usable, require_one_readable
from common.data.transforms import (
    AugmentConfig,
    MinSide,
    build_eval_transform,
    build_train_transform,
)

log = logging.getLogger("mvss.train")


def build_dataset(
    source: str, cfg: dict[str, Any], nclass: int, train: bool, eval_size: int | None = None
) -> ForgeryDataset:
    """The training (augmented, labels from the crop's content) or validation dataset of
    a list; a source without one readable, labelled sample is a :class:`UsageError`."""
    option = "--train_list" if train else "--val_list"
    records, problems = load_usable(
        source,
        f"{option} {source}",
        noun="samples",
        root=cfg.get("data_root"),
        root_option="--data_root",  # the training scripts' spelling (both are accepted)
    )
    unlabelled = [r.image for r in records if r.label < 0]
    if unlabelled:
        raise UsageError(
            f"{len(unlabelled)} rows have no label (e.g. {unlabelled[0]})",
            f"{option} {source}",
            "training needs 'image mask label' rows (label 0 = authentic)",
        )
    if dist.is_main():
        for p in problems[:20]:
            log.warning("skipping %s", p)
        if len(problems) > 20:
            log.warning("… and %d more problems in %s", len(problems) - 20, source)
    masks = MaskOptions(
        nclass=nclass,
        threshold=cfg["mask_threshold"],
        edge_thickness=cfg["edge_thickness"],
        size_policy=cfg["mask_size_policy"],
        # binary tasks only: the three-class task keeps the classes
        desensitised=cfg.get("desensitised", "positive"),
    )
    if train:
        # training labels follow what the crop/resize kept of the manipulated region
        dataset = ForgeryDataset(
            records,
            build_train_transform(AugmentConfig.from_config(cfg)),
            masks,
            labels_from_content=True,
            min_region_pixels=cfg["min_region_pixels"],
        )
    else:
        dataset = ForgeryDataset(records, build_eval_transform(eval_size), masks)
    require_one_readable(records, f"{option} {source}", dataset.load, noun="samples")
    return dataset


def seed_worker(worker_id: int) -> None:
    """Each worker's numpy/random/albumentations streams follow the loader's seed (the
    augmentations of a dataset with an ``augment_seed`` are then seeded per sample, see
    :func:`seed_epoch`; without one, workers at least draw different streams)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int, dataset: ForgeryDataset) -> torch.Generator:
    """Reseed everything at each epoch start so a resumed run repeats the same epochs;
    the dataset seeds each sample's augmentation from this epoch's seed and its index."""
    s = seed * 100_003 + epoch * 1009 + rank
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    dataset.augment_seed = s % 2**32
    return torch.Generator().manual_seed(s)


def workers_compete(workers: int, device: torch.device) -> str | None:
    """Why ``workers`` loader processes slow CPU training here, or None.

    On CPU the model's threads already use every core; a loader process then takes a
    core from them mid-step, and each parallel region waits for its slowest thread.
    Measured on 2 cores (AMD EPYC, the previous demo recipe: 192 px, batch 8): 9.6 img/s
    with 2 workers, 10.2 with 1, 11.4 with 0 (decoding a 192-px sample costs about 1 ms,
    in line or not). Counts every process of this host under torchrun
    (``LOCAL_WORLD_SIZE``) against the cores this process may use (logical ones)."""
    if workers <= 0 or device.type != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = torch.get_num_threads() * local
    if cores is None or (workers * local) + threads <= cores:
        return None
    return (
        f"{workers * local} data-loading processes share {cores} cores with {threads} "
        "compute threads; on CPU that is slower than loading in the main process: "
        "set workers: 0"
    )


def train_loader(ds: ForgeryDataset, cfg: dict[str, Any], epoch: int) -> DataLoader:
    g = seed_epoch(cfg["seed"], epoch, dist.rank(), ds)
    if dist.world_size() > 1:
        sampler: Any = DistributedSampler(ds, shuffle=True, seed=cfg["seed"], drop_last=False)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(ds, generator=g)
    return DataLoader(
        ds,
        batch_size=cfg["batch_size"],
        sampler=sampler,
        num_workers=cfg["workers"],
        collate_fn=collate_samples,
        worker_init_fn=seed_worker,
        generator=g,
        drop_last=False,
        pin_memory=torch.cuda.is_available(),
    )


def val_loader(ds: ForgeryDataset, cfg: dict[str, Any]) -> DataLoader:
    # at the original size (the classifier on crops) images differ in size: one per batch
    full_size = ds.transform is None or isinstance(ds.transform, MinSide)
    return DataLoader(
        ds,
        batch_size=1 if full_size else cfg["batch_size"],
        sampler=dist.ShardSampler(len(ds)),
        num_workers=cfg["workers"],
        collate_fn=collate_samples,
    )
