"""Many test sets × degradations in one run: what benchmark.py runs.

For each set and each level (``none`` = clean, then every perturbation), in two phases:

1. every process predicts its share of the images, as whole batches (batch ``k`` of the
   batches one process would form goes to rank ``k mod N``), and writes the maps
   (``pred/``, ``bin/``) into the level's folder; batches whose maps are all there are
   reused, so an interrupted run resumes where it stopped;
2. the main process scores all the maps in the set's order with the evaluators of
   ``infer_mvss_calmetrics.py`` (``per_image.csv``, ``summary.json``).

Each map is computed in the same batch as in a single process (kernels may round
differently for another batch), and scores come from the 8-bit maps on disk, so a sharded
or resumed run gives exactly the numbers of a single process, whatever the number of
processes (the output folder must be on a
filesystem every process sees, as it is on one machine or a cluster's shared disk).
The classifier's image scores are gathered instead (no maps) and reported in the set's
order the same way.

Layout: ``<out>/<set>/<level>/`` per set and level, and at ``<out>`` the combined tables
(see :mod:`common.benchmark.tables`).
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from common.benchmark.degradations import Perturbation
from common.core import distributed as dist
from common.core.progress import progress
from common.core.reports import unique_names, write_json
from common.core.user_errors import UsageError
from common.data.sources import (
    Problem,
    Record,
    decode_record,
    load_usable,
    require_one_readable,
)
from common.evaluation.batch_run import EvalSettings, stamp_problem
from common.evaluation.classification import report_classification
from common.evaluation.localization import (
    predict_maps,
    run_pred_dir_evaluation,
)
from common.evaluation.thresholds import DEFAULT_THRESHOLD, ChosenThresholds
from common.inference.crops import iter_scores
from common.inference.single_image import RunOptions

CLEAN = "none"


@dataclass(frozen=True)
class BenchSet:
    """A named test set: any source the scripts accept (list, JSON, folder, glob), the
    data root its list's relative paths start from (None: the run's ``--data-root``, else
    beside the list), and published figures to print beside ours."""

    name: str
    source: str
    root: str | None = None  # the set's own (NAME=LIST@ROOT, or root: under the set)
    paper: dict[str, float] | None = None
    file_root: str | None = None  # a sets file's top-level root: --data-root overrides it


def parse_sets(items: list[str]) -> list[BenchSet]:
    """``NAME=SOURCE`` or ``NAME=SOURCE@ROOT`` items → sets; names must be unique and
    folder-safe."""
    sets = []
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise UsageError(f"expected NAME=LIST or NAME=LIST@ROOT, got {item!r}", "--sets")
        source, at, root = _split_root(source.strip())
        if at and not root.strip():
            raise UsageError(f"expected a data root after '@', got {item!r}", "--sets")
        sets.append(BenchSet(name.strip(), source.strip(), root.strip() or None))
    return checked_sets(sets, "--sets")


def _split_root(source: str) -> tuple[str, str, str]:
    """``SOURCE@ROOT`` → (SOURCE, "@", ROOT); a path that itself holds an ``@`` (a
    folder named after an e-mail address, ``user@host`` mounts) is kept whole when it
    exists, else split at the ``@`` whose left side names an existing source."""
    if "@" not in source or _exists(source):
        return source, "", ""
    cuts = [i for i, ch in enumerate(source) if ch == "@"]
    for i in cuts:
        if _exists(source[:i]):
            return source[:i], "@", source[i + 1 :]
    return source.partition("@")


def _exists(source: str) -> bool:
    return Path(source).exists() or bool(glob.glob(source))


SET_KEYS = ("list", "root", "paper")  # what a set of a sets file may say


class _DuplicateKeyError(ValueError):
    pass


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping: the second set of a
    name would silently replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKeyError(
                    f"{key!r} is given twice (line {key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_sets_file(path: str | Path) -> list[BenchSet]:
    """A YAML mapping ``NAME: SOURCE`` (or ``sets: {NAME: SOURCE}``), where a source may
    also be a mapping ``{list: SOURCE, root: DIR, paper: {metric: value}}``; a top-level
    ``root:`` is the data root of every set without its own. Relative sources and roots
    are taken from the file's folder."""
    path = Path(path)
    where = f"--sets-file {path}"
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeys)  # a safe loader
    except UnicodeDecodeError as exc:
        raise UsageError("not a text (YAML) file", where) from exc
    except _DuplicateKeyError as exc:
        raise UsageError(str(exc), where) from exc
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the sets file ({exc})", where) from exc
    default_root = data.get("root") if isinstance(data, dict) else None
    if isinstance(data, dict) and isinstance(data.get("sets"), dict):
        others = sorted(str(k) for k in data if k not in ("sets", "root"))
        if others:
            raise UsageError(f"unknown top-level key {others[0]!r} (known: sets, root)", where)
        data = data["sets"]
    if not isinstance(data, dict) or not data:
        raise UsageError("expected a mapping NAME: LIST", where)

    def local(value: object) -> str:
        src = Path(str(value)).expanduser()
        return str(path.parent / src) if not src.is_absolute() else str(src)

    sets = []
    for name, entry in data.items():
        if name == "root":
            continue
        spec = entry if isinstance(entry, dict) else {"list": entry}
        unknown = sorted(str(k) for k in spec if k not in SET_KEYS)
        if unknown:  # a misspelt root: or paper: would be lost without a word
            known = ", ".join(SET_KEYS)
            raise UsageError(f"set {name!r}: unknown key {unknown[0]!r} (known: {known})", where)
        if "list" not in spec:
            raise UsageError(f"set {name!r} has no 'list'", where)
        source = Path(str(spec["list"])).expanduser()
        if not source.is_absolute() and (path.parent / source).exists():
            source = path.parent / source
        root = spec.get("root")
        paper = spec.get("paper")
        if paper is not None and not (
            isinstance(paper, dict) and all(isinstance(v, int | float) for v in paper.values())
        ):
            raise UsageError(f"set {name!r}: 'paper' must map metric names to numbers", where)
        own = None if root is None else local(root)
        file_root = None if default_root is None else local(default_root)
        sets.append(BenchSet(str(name), str(source), own, paper, file_root))
    return checked_sets(sets, where)


def checked_sets(sets: list[BenchSet], where: str) -> list[BenchSet]:
    """``sets``, once each name is known to be unique and a folder name."""
    names = [s.name for s in sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"set names must be unique: {', '.join(dupes)}", where)
    bad = [n for n in names if "/" in n or n in (".", "..")]
    if bad:
        raise UsageError(f"set names are folder names: {', '.join(bad)}", where)
    return sets


@dataclass
class LoadedSet:
    name: str
    source: str
    records: list[Record]
    problems: list[Problem]
    paper: dict[str, float] | None = None  # published figures, printed beside ours


def load_sets(sets: list[BenchSet], data_root: str | None = None) -> list[LoadedSet]:
    """Every set's records, read before any work (a set with no usable image, a missing
    data root, or a list that does not resolve under it is a user error naming it)."""
    loaded = []
    for s in sets:
        where = f"--sets {s.name}={s.source}"
        # the set's own root, then the command line's, then the sets file's
        root = s.root or data_root or s.file_root
        option = f"root of set {s.name}" if s.root else "--data-root"
        if not s.root and not data_root and s.file_root:
            option = "root: of the sets file (or --data-root)"
        source = s.source
        if root and not Path(source).is_absolute() and not Path(source).exists():
            source = str(Path(root).expanduser() / source)  # a folder set under the root
        records, problems = load_usable(source, where, root=root, root_option=option)
        require_one_readable(records, where, lambda i, r=records: decode_record(r[i]))
        loaded.append(LoadedSet(s.name, s.source, records, problems, s.paper))
    return loaded


def level_name(perturbation: Perturbation | None) -> str:
    return CLEAN if perturbation is None else perturbation.name


def _merged(parts: list[dict[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in parts:
        out.update(part)
    return out


# ----------------------------------------------------------------------------- resume


def level_stamp(stamp: dict, data: LoadedSet, perturbation: Perturbation | None) -> dict:
    """The run's stamp for one set at one level: with the set's images (their file names
    in order: another list under the same set name is caught) and, for a degraded level
    only, the perturbation seed."""
    out = dict(stamp)
    if perturbation is None:
        out.pop("seed", None)
    names = "\n".join(Path(r.image).name for r in data.records)
    out["images_sha256"] = hashlib.sha256(names.encode()).hexdigest()
    return out


def stale_levels(
    out: Path, loaded: list[LoadedSet], perturbations: list[Perturbation], stamp: dict
) -> list[tuple[Path, str]]:
    """Level folders holding results made otherwise (another checkpoint, set list, resize,
    tiling, precision, threshold, seed), or of unknown origin: (folder, what differs)."""
    stale = []
    for data in loaded:
        for p in [None, *perturbations]:
            folder = out / data.name / level_name(p)
            problem = stamp_problem(folder, level_stamp(stamp, data, p))
            if problem:
                stale.append((folder, problem))
    return stale


# ----------------------------------------------------------------------------- localisation


def run_localization_level(
    model: nn.Module,
    data: LoadedSet,
    perturbation: Perturbation | None,
    out: Path,
    opts: RunOptions,
    settings: EvalSettings,
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """One set at one level: maps from every process, scores on the main one. Returns
    (the summary on the main process, else None; the failures)."""
    names = unique_names([r.image for r in data.records])
    mine = dist.whole_batch_shard(len(data.records), settings.batch_size)
    failures = predict_maps(
        model,
        [data.records[i] for i in mine],
        [names[i] for i in mine],
        out,
        opts,
        replace(settings, skip_existing=True, save_overlay=False),
        perturbation,
        desc=f"{data.name} {level_name(perturbation)}",
        show_progress=dist.is_main(),
    )
    failures = _merged(dist.gather_objects(failures))
    summary = None
    if dist.is_main():
        quiet = replace(settings, quiet=True)
        run_pred_dir_evaluation(data.records, data.problems, out / "pred", out, quiet, failures)
        summary = json.loads((out / "summary.json").read_text())
    dist.barrier()
    return summary, failures


def _or_default(value: float | None) -> float:
    """A chosen threshold (0.0 is a real choice), or the release's 0.5 where none could
    be chosen: what the thresholds file written beside it gives with --thresholds."""
    return DEFAULT_THRESHOLD if value is None else value


def rescore_at(
    data: LoadedSet,
    level_out: Path,
    settings: EvalSettings,
    chosen: ChosenThresholds,
    failures: dict[str, str],
) -> dict[str, Any]:
    """``data``'s clean maps scored at the chosen thresholds (0.5 where none could be
    chosen), into ``<level>/th_from_<set>/`` (main process)."""
    at = replace(
        settings,
        threshold=_or_default(chosen.pixel),
        image_threshold=_or_default(chosen.image),
        quiet=True,
    )
    out = level_out / f"th_from_{chosen.chosen_on}"
    run_pred_dir_evaluation(data.records, data.problems, level_out / "pred", out, at, failures)
    return _stamp_chosen(out / "summary.json", chosen)


def _stamp_chosen(path: Path, chosen: ChosenThresholds) -> dict[str, Any]:
    """The summary of a ``th_from_<set>`` folder with the thresholds it was scored at and
    where they came from, as every other summary records its own."""
    keys: dict[str, Any] = {
        "thresholds_source": chosen.describe(),
        "image_threshold": _or_default(chosen.image),
    }
    if chosen.task != "classification":
        keys["pixel_threshold"] = _or_default(chosen.pixel)
    summary = {**json.loads(path.read_text()), **keys}
    write_json(path, summary)
    return summary


# ----------------------------------------------------------------------------- classifier


@dataclass
class ClassifierSettings:
    crop: int | None
    stride: int
    resize: int | None
    threshold: float
    batch_size: int
    workers: int


def run_classifier_level(
    model: nn.Module,
    data: LoadedSet,
    perturbation: Perturbation | None,
    out: Path,
    opts: RunOptions,
    cls: ClassifierSettings,
    settings: EvalSettings,
) -> tuple[dict[str, Any] | None, list[tuple[int, dict[str, Any]]]]:
    """One set at one level for the classifier: scores from every process (reused from
    ``scores.json`` when a previous run finished this level), reported on the main one."""
    saved = out / "scores.json"
    results: list[tuple[int, dict[str, Any]]] = []
    if dist.is_main() and saved.is_file():
        try:
            results = [(int(i), r) for i, r in json.loads(saved.read_text())]
        except (json.JSONDecodeError, TypeError, ValueError):
            results = []
        if [i for i, _ in results] != list(range(len(data.records))):
            results = []  # another list, or cut short: scored again
    if not dist.gather_objects(bool(results))[0]:  # the main process decides for all
        mine = dist.whole_batch_shard(len(data.records), cls.batch_size)
        scored = iter_scores(
            model,
            [data.records[i] for i in mine],
            opts,
            cls.crop,
            cls.stride,
            cls.resize,
            settings.masks,
            cls.batch_size,
            cls.workers,
            perturbation,
        )
        desc = f"{data.name} {level_name(perturbation)}"
        bar = progress(scored, total=len(mine), desc=desc, unit="img", disable=not dist.is_main())
        local = [(mine[j], r) for j, r in bar]
        shards = dist.gather_objects(local)
        results = sorted((pair for shard in shards for pair in shard), key=lambda x: x[0])
    summary = None
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_name(".scores.json.tmp")
        tmp.write_text(json.dumps(results))
        tmp.replace(saved)
        report_classification(data.records, results, data.problems, out, cls.threshold, True)
        summary = json.loads((out / "summary.json").read_text())
    dist.barrier()
    return summary, results


def rescore_classifier_at(
    data: LoadedSet,
    level_out: Path,
    results: list[tuple[int, dict[str, Any]]],
    chosen: ChosenThresholds,
) -> dict[str, Any]:
    out = level_out / f"th_from_{chosen.chosen_on}"
    threshold = _or_default(chosen.image)
    report_classification(data.records, results, data.problems, out, threshold, True)
    return _stamp_chosen(out / "summary.json", chosen)
