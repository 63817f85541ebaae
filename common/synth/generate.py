"""Writing a synthetic dataset: many images in parallel, resumable, the same from a seed.

Sample ``i`` of split ``s`` draws everything from its own random stream (seed, split, i),
so the dataset does not depend on the number of worker processes or their order, a
split's size can grow without changing its first images, and an interrupted run resumes
where it stopped: each finished sample is appended to ``manifest.jsonl`` after its files
are written, and samples already there are not made again. The list files are written at
the end, from the manifest, in index order.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.core.progress import progress
from common.data.decode import write_png
from common.synth.forgery import SyntheticConfig, contact_sheet, make_sample
from common.synth.photos import Photo, PhotoPool, write_photo_splits

MANIFEST = "manifest.jsonl"
SETTINGS = "generation.json"


class GenerationMismatchError(ValueError):
    """The output folder holds a generation made with other settings."""


@dataclass(frozen=True)
class Job:
    split: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.split}_{self.index:05d}"


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_and_write(out: Path, pool: PhotoPool, cfg: SyntheticConfig, job: Job) -> dict[str, Any]:
    """One sample made and written; its manifest record."""
    sample = make_sample(pool, cfg, sample_rng(cfg.seed, job.split, job.index))
    if sample.encoded is not None:  # the final JPEG exactly as saved
        image_rel, data = f"images/{job.name}.jpg", sample.encoded
    else:  # not compressed at the end: stored losslessly
        ok, buf = cv2.imencode(".png", sample.image)
        if not ok:
            raise OSError(f"PNG encoding failed for {job.name}")
        image_rel, data = f"images/{job.name}.png", buf.tobytes()
    _write_atomic(out / image_rel, data)
    record: dict[str, Any] = {
        "split": job.split,
        "index": job.index,
        "image": image_rel,
        "label": sample.label,
        "kind": sample.kind,
        "photos": list(sample.photos),
        "region": sample.region_source,
    }
    if sample.label != 0:
        record["mask"], record["mask3"] = f"masks/{job.name}.png", f"masks3/{job.name}.png"
        write_png(out / record["mask"], np.where(sample.classes > 0, 255, 0).astype(np.uint8))
        write_png(out / record["mask3"], sample.classes)
    record["bad_photos"] = dict(pool.bad)
    return record


# ----------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _init_worker(out: Path, pools: dict[str, PhotoPool], cfg: SyntheticConfig) -> None:
    cv2.setNumThreads(1)
    _WORKER.update(out=out, pools=pools, cfg=cfg)


def _work(job: Job) -> dict[str, Any]:
    return make_and_write(_WORKER["out"], _WORKER["pools"][job.split], _WORKER["cfg"], job)


def _run_jobs(
    out: Path, pools: dict[str, PhotoPool], cfg: SyntheticConfig, jobs: list[Job], workers: int
) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        for job in jobs:
            yield make_and_write(out, pools[job.split], cfg, job)
        return
    # spawn, not fork: a forked child of a process whose OpenCV or OpenMP thread pools
    # already ran can deadlock (seen here: cv2.setNumThreads in the child hung)
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, _init_worker, (out, pools, cfg)) as pool:
        chunk = max(1, min(16, len(jobs) // (workers * 8)))
        yield from pool.imap_unordered(_work, jobs, chunksize=chunk)


# ----------------------------------------------------------------------------- manifest


def settings_record(
    cfg: SyntheticConfig, assignment: Mapping[str, Sequence[Photo]], extra: dict | None = None
) -> dict:
    """What decides every image (counts aside): checked when a run is resumed."""
    return {
        "config": json.loads(json.dumps(asdict(cfg), default=list)),
        "photos": {s: [p.name for p in photos] for s, photos in assignment.items()},
        **(extra or {}),
    }


def _read_manifest(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            done[(record["split"], int(record["index"]))] = record
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut off by an interruption: that sample is made again
    return done


def prepare_output(out: Path, settings: dict, overwrite: bool) -> dict[tuple[str, int], dict]:
    """The samples already made by an identical earlier run (resume), or none."""
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / SETTINGS
    if settings_path.is_file() and not overwrite:
        try:
            previous = json.loads(settings_path.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous != settings:
            raise GenerationMismatchError(
                f"{out} holds a dataset generated with other settings or photos"
            )
    else:
        (out / MANIFEST).unlink(missing_ok=True)
        settings_path.write_text(json.dumps(settings, indent=1) + "\n")
    done = _read_manifest(out / MANIFEST)
    return {k: r for k, r in done.items() if (out / r["image"]).is_file()}


def _list_lines(records: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Binary list (label = manipulation type, 4 for desensitised only: its 0/255 mask
    marks those regions, manipulated under the binary tasks' ``positive``) and
    three-class list (1 tampered, 2 desensitised only; index masks keep class 2 apart,
    so the classifier's ``negative`` can tell such an image authentic)."""
    lines, lines3 = [], []
    for r in records:
        if r["label"] == 0:
            lines.append(f"{r['image']} None 0")
            lines3.append(f"{r['image']} None 0")
        else:
            lines.append(f"{r['image']} {r['mask']} {r['label']}")
            lines3.append(f"{r['image']} {r['mask3']} {2 if r['label'] == 4 else 1}")
    return lines, lines3


@dataclass
class GenerationReport:
    lists: dict[str, Path]
    made: int
    reused: int
    bad_photos: dict[str, str]


def generate(
    out: str | Path,
    assignment: Mapping[str, Sequence[Photo] | PhotoPool],
    counts: Mapping[str, int],
    cfg: SyntheticConfig,
    workers: int = 0,
    sheet_count: int = 32,
    overwrite: bool = False,
    show_progress: bool = False,
    extra_settings: dict | None = None,
) -> GenerationReport:
    """Write ``images/``, ``masks/`` (0/255, manipulated = classes 1 ∪ 2), ``masks3/``
    (index PNG 0/1/2), per split ``<split>.txt`` and, with desensitisation,
    ``<split>3.txt``, ``photo_splits.csv``, ``contact_sheet.png``, ``manifest.jsonl``
    and ``generation.json``. ``assignment`` gives each split its photographs;
    ``extra_settings`` (e.g. the annotation file's digest) join what a resume checks."""
    out = Path(out)
    pools = {
        s: p if isinstance(p, PhotoPool) else PhotoPool(p)
        for s, p in assignment.items()
        if s in counts
    }
    settings = settings_record(cfg, {s: pool.photos for s, pool in pools.items()}, extra_settings)
    done = prepare_output(out, settings, overwrite)
    write_photo_splits(out / "photo_splits.csv", {s: pool.photos for s, pool in pools.items()})
    jobs = [
        Job(split, i) for split, n in counts.items() for i in range(n) if (split, i) not in done
    ]
    reused = sum(1 for split, n in counts.items() for i in range(n) if (split, i) in done)
    bad: dict[str, str] = {}
    results = _run_jobs(out, pools, cfg, jobs, workers)
    if show_progress:
        results = progress(results, desc="generating", unit="img", total=len(jobs))
    with (out / MANIFEST).open("a") as manifest:
        for record in results:
            bad.update(record.pop("bad_photos"))
            done[(record["split"], record["index"])] = record
            manifest.write(json.dumps(record) + "\n")
            manifest.flush()
    lists: dict[str, Path] = {}
    sheet: list[tuple[np.ndarray, np.ndarray]] = []
    for split, n in counts.items():
        records = [done[(split, i)] for i in range(n)]
        lines, lines3 = _list_lines(records)
        lists[split] = out / f"{split}.txt"
        lists[split].write_text("\n".join(lines) + "\n")
        if cfg.desensitise > 0:
            (out / f"{split}3.txt").write_text("\n".join(lines3) + "\n")
        for r in records[: max(0, sheet_count - len(sheet))]:
            image = cv2.imread(str(out / r["image"]), cv2.IMREAD_COLOR)
            classes = (
                cv2.imread(str(out / r["mask3"]), cv2.IMREAD_UNCHANGED)
                if r.get("mask3")
                else np.zeros(image.shape[:2], np.uint8)
            )
            sheet.append((image, classes))
    if sheet:
        write_png(out / "contact_sheet.png", contact_sheet(sheet))
    return GenerationReport(lists, len(jobs), reused, bad)
