"""Authentic photographs for synthetic forgeries: which exist, which split each goes to.

A photograph is a :class:`Photo` (a name, where its pixels come from, its object
outlines when COCO annotations are given), never its decoded pixels: a folder of tens of
thousands of photos is scanned into names and paths only, and each worker decodes the
photo a sample needs when it needs it (:class:`PhotoPool`, a small cache per process).

Every photograph belongs to exactly one split, so validation and test images are cut from
photographs that training never saw (their content cannot be memorised). Photos that
show the same scene (the stereo pair, or a folder of shots with ``group_by_folder``)
form one group and go to one split together.
"""

from __future__ import annotations

import csv
import functools
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.data.decode import IMAGE_EXTENSIONS, BadInputError, read_image

SEEN_TEST = "test_seen"  # a test split cut from the training photographs


@dataclass(frozen=True)
class Photo:
    """One authentic photograph: ``name`` is stable across machines (a bundled name or
    the path relative to the photo folder); ``objects`` are COCO polygon outlines in
    the photo's pixel coordinates, one tuple of (N, 2) float32 parts per object."""

    name: str
    path: str | None = None  # None: a bundled photo, loaded by name
    group: str = ""
    objects: tuple[tuple[np.ndarray, ...], ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        return self.group or self.name


# ----------------------------------------------------------------------------- bundled

# Photographs shipped inside installed wheels (scikit-image, scikit-learn, matplotlib):
# nothing is downloaded. The split of each is fixed, so `make demo` is the same
# everywhere: validation and test photographs differ from each other and from training.
_SKIMAGE_COLOUR = {
    "astronaut": "train",
    "rocket": "train",
    "hubble_deep_field": "train",
    "retina": "train",
    "immunohistochemistry": "train",
    "chelsea": "val",
    "coffee": "test",
}
# Grey photographs (converted to three equal channels): more content for training only.
_SKIMAGE_GREY = ("brick", "camera", "cell", "clock", "coins", "grass", "gravel", "moon")
_OTHER = {  # name → (package, path inside it, split)
    "sklearn_china": ("sklearn", "datasets/images/china.jpg", "test"),
    "sklearn_flower": ("sklearn", "datasets/images/flower.jpg", "val"),
    "matplotlib_grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "test"),
}
BUNDLED_SPLITS: dict[str, str] = {
    **_SKIMAGE_COLOUR,
    "motorcycle_left": "train",
    "motorcycle_right": "train",
    **{name: "train" for name in _SKIMAGE_GREY},
    **{name: spec[2] for name, spec in _OTHER.items()},
}


@functools.cache
def _load_bundled(name: str) -> np.ndarray:
    """Decoded once per process (about 20 MB for all of them), read-only."""
    if name in _OTHER:
        package, rel, _ = _OTHER[name]
        module = __import__(package)
        image = read_image(Path(module.__file__).parent / rel)
    else:
        import skimage.data as data

        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            rgb = left if name.endswith("left") else right
        else:
            rgb = getattr(data, name)()
        if rgb.ndim == 2:
            image = cv2.cvtColor(rgb, cv2.COLOR_GRAY2BGR)
        else:
            image = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2BGR)
    image.flags.writeable = False
    return image


def bundled_photo_set() -> list[Photo]:
    """The bundled photographs as :class:`Photo` records (the stereo pair is one group)."""
    return [
        Photo(name, group="motorcycle" if name.startswith("motorcycle_") else "")
        for name in BUNDLED_SPLITS
    ]


def bundled_photos() -> list[np.ndarray]:
    """The bundled photographs decoded (BGR uint8, writable copies), in a fixed order."""
    return [_load_bundled(p.name).copy() for p in bundled_photo_set()]


# ----------------------------------------------------------------------------- folders


def scan_folder(folder: str | Path, group_by_folder: bool = False) -> list[Photo]:
    """Every image file under ``folder`` (recursively, sorted), by path only: nothing is
    decoded here, so this is quick for tens of thousands of photos. Unreadable files are
    found (and reported) when a worker first needs them."""
    root = Path(folder)
    photos = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        group = path.parent.relative_to(root).as_posix() if group_by_folder else ""
        photos.append(Photo(rel, str(path), group=group))
    return photos


def load_photo(photo: Photo) -> np.ndarray:
    """Decoded pixels (BGR uint8); raises :class:`BadInputError` naming the file."""
    return _load_bundled(photo.name) if photo.path is None else read_image(photo.path)


class PhotoPool:
    """The photographs of one split, decoded on demand with a small cache, so a worker
    holds a few photos in memory, never the collection. Photos that fail to decode are
    remembered (``bad``) and skipped by :meth:`pick`."""

    def __init__(self, photos: Sequence[Photo], cache_size: int = 8):
        if not photos:
            raise ValueError("a split needs at least one photograph")
        self.photos = list(photos)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self.bad: dict[str, str] = {}

    def _load(self, index: int) -> np.ndarray:
        return load_photo(self.photos[index])

    def __len__(self) -> int:
        return len(self.photos)

    def image(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        image = self._load(index)
        if min(image.shape[:2]) < 16:
            raise BadInputError(self.photos[index].path or self.photos[index].name, "too small")
        self._cache[index] = image
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return image

    def pick(self, rng: np.random.Generator, avoid: int | None = None) -> tuple[int, np.ndarray]:
        """A random readable photo (another than ``avoid`` when the split has two)."""
        n = len(self.photos)
        start = int(rng.integers(n))
        if avoid is not None and n > 1 and start == avoid:
            start = (start + 1) % n
        for step in range(n):
            index = (start + step) % n
            if avoid is not None and n > 1 and index == avoid:
                continue
            if self.photos[index].name in self.bad:
                continue
            try:
                return index, self.image(index)
            except BadInputError as exc:
                self.bad[self.photos[index].name] = exc.reason
        where = str(Path(self.photos[0].path).parent) if self.photos[0].path else "photos"
        raise BadInputError(where, f"none of the split's {n} photographs can be read")


class ArrayPool(PhotoPool):
    """A pool over photos already in memory (tests, benchmarks)."""

    def __init__(self, images: Iterable[np.ndarray]):
        self._arrays = list(images)
        super().__init__([Photo(f"array_{i}") for i in range(len(self._arrays))], cache_size=0)

    def _load(self, index: int) -> np.ndarray:
        return self._arrays[index]


# ----------------------------------------------------------------------------- splits


def _order(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def assign_splits(
    photos: Sequence[Photo],
    splits: Sequence[str],
    fractions: Sequence[float],
    seed: int,
) -> dict[str, list[Photo]]:
    """Each photo group to exactly one split, by a seeded order of the group names (the
    same photo lands in the same split whatever else is in the folder, for a fixed set of
    names), the groups shared out in proportion to ``fractions`` with at least one group
    per split. ``SEEN_TEST`` is not assigned: it reuses the training photos."""
    splits = list(splits)
    groups: dict[str, list[Photo]] = {}
    for p in photos:
        groups.setdefault(p.key, []).append(p)
    if len(groups) < len(splits):
        raise ValueError(
            f"{len(groups)} photo group(s) cannot give {len(splits)} photo-disjoint splits "
            f"({', '.join(splits)})"
        )
    keys = sorted(groups, key=lambda k: _order(k, seed))
    total = float(sum(fractions))
    counts = [max(1, round(len(keys) * f / total)) for f in fractions]
    while sum(counts) > len(keys):  # take back from the largest share
        counts[int(np.argmax(counts))] -= 1
    counts[int(np.argmax(fractions))] += len(keys) - sum(counts)
    out: dict[str, list[Photo]] = {}
    start = 0
    for split, count in zip(splits, counts, strict=True):
        out[split] = [p for k in keys[start : start + count] for p in groups[k]]
        start += count
    return out


def bundled_splits(splits: Sequence[str]) -> dict[str, list[Photo]]:
    """The bundled photos by their fixed split; a split other than train/val/test (or a
    missing val) takes the training photos."""
    by_split: dict[str, list[Photo]] = {}
    for p in bundled_photo_set():
        by_split.setdefault(BUNDLED_SPLITS[p.name], []).append(p)
    return {s: by_split.get(s, by_split["train"]) for s in splits}


def write_photo_splits(path: Path, assignment: dict[str, list[Photo]]) -> None:
    """``photo_splits.csv``: photo, group, split (a test_seen row repeats training photos)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["photo", "group", "split"])
        for split, photos in assignment.items():
            for p in photos:
                writer.writerow([p.name, p.key, split])
