"""Benchmark a checkpoint on several test sets and under degradations, in one run.

Per set and level (clean "none", then each perturbation) the outputs infer_mvss_calmetrics.py
writes, under <save_dir>/<model>/<set>/<level>/; at <save_dir>/<model>/ one combined table
(benchmark.md/.csv/.json: sets as columns) and, per perturbation kind, tables and a plot.
Under torchrun the images are shared out between the processes; the numbers are those of
one process. Maps already written are reused, so an interrupted run resumes. Exit code 3
when some images failed (named in the CSVs), 2 for a user error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from common.benchmark.degradations import PRESETS, Perturbation, parse_sweep, preset
from common.benchmark.runner import (
    ClassifierSettings,
    LoadedSet,
    checked_sets,
    level_name,
    level_stamp,
    load_sets,
    parse_sets,
    read_sets_file,
    rescore_at,
    rescore_classifier_at,
    run_classifier_level,
    run_localization_level,
    stale_levels,
)
from common.benchmark.tables import (
    CALIBRATION_ROWS,
    CLASSIFIER_AT_THRESHOLD,
    CLASSIFIER_CURVES,
    CLASSIFIER_ROWS,
    LOCALIZATION_AT_THRESHOLD,
    LOCALIZATION_CURVES,
    LOCALIZATION_ROWS,
    combined_table,
    robustness_tables,
)
from common.core import distributed as dist
from common.core.reports import EXIT_SOME_FAILED, write_json
from common.core.scores import NOT_PRISTINE
from common.core.user_errors import (
    Parser,
    UsageError,
    check_stride,
    check_whole_image_size,
    non_negative_int,
    option_given,
    positive_int,
    require_writable_dir,
    run_cli,
)
from common.data.masks import (
    CLASSIFIER_DESENSITISED,
    DEFAULT_MASK_THRESHOLD,
    LOCALIZATION_DESENSITISED,
)
from common.evaluation.arguments import (
    add_io_args,
    add_threshold_args,
    eval_settings,
    maps_stamp,
    resolve_thresholds,
)
from common.evaluation.batch_run import write_stamp
from common.evaluation.score_report import calibration_report, mask_rule_line, mask_rule_report
from common.evaluation.thresholds import (
    ChosenThresholds,
    Thresholds,
    choose_from_maps,
    choose_from_scores,
    write_thresholds,
)
from common.inference.arguments import (
    add_model_args,
    add_run_args,
    load_model,
    model_spec,
    parse_resize,
    run_options,
)
from common.inference.crops import DEFAULT_CROP, classifier_crops
from common.inference.settings import CheckpointDescription, describe_checkpoint, run_score_rule


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    g = parser.add_argument_group("benchmark")
    g.add_argument("--sets", nargs="+", default=[], help="NAME=LIST (list, JSON, folder, glob)")
    g.add_argument("--sets-file", "--sets_file", dest="sets_file", help="YAML: NAME: LIST")
    g.add_argument(
        "--perturb",
        nargs="+",
        default=[],
        help="sweeps KIND:LEVEL,… with KIND jpeg (quality), blur (odd kernel), noise "
        "(std, 8-bit levels), resize (factor); e.g. jpeg:50,70,90 blur:3,7",
    )
    g.add_argument("--preset", choices=sorted(PRESETS), help="benco: IMDL-BenCo's sweeps")
    g.add_argument("--seed", type=non_negative_int, default=0, help="perturbation seed")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute levels whose maps were made otherwise (default: refuse)",
    )
    g.add_argument(
        "--th-from",
        "--th_from",
        dest="th_from",
        help="choose the thresholds that maximise F1 on this set (and fit the image-score "
        "calibration there); report the others at them; written to "
        "<save_dir>/<checkpoint>/thresholds_from_<NAME>.json for --thresholds",
    )
    g.add_argument(
        "--task",
        choices=("auto", "localization", "classification"),
        default="auto",
        help="auto: classification for checkpoints of train_demo_cls.py, else localization",
    )
    g.add_argument(
        "--crop",
        type=parse_resize,
        default=argparse.SUPPRESS,
        help=f"classifier crops (default: the crop the checkpoint trained on, else {DEFAULT_CROP})",
    )
    g.add_argument(
        "--crop-stride",
        dest="crop_stride",
        type=positive_int,
        default=argparse.SUPPRESS,
        help="classifier crop stride (default: --crop)",
    )
    add_io_args(
        parser, desensitised=LOCALIZATION_DESENSITISED, sources=False, save_dir="outputs/benchmark"
    )
    add_model_args(parser)
    add_run_args(parser)
    add_threshold_args(
        parser,
        "pixel threshold in (0, 1), p > th (the classifier: its image threshold)",
        "image threshold in (0, 1), score > th",
    )
    args = parser.parse_args(argv)
    if not args.model_path:
        raise UsageError("a checkpoint is required", "--model_path")
    return args


def _perturbations(args: argparse.Namespace) -> list[Perturbation]:
    out: list[Perturbation] = []
    try:
        for spec in args.perturb:
            out += parse_sweep(spec, args.seed)
        if args.preset:
            out += preset(args.preset, args.seed)
    except ValueError as exc:
        raise UsageError(str(exc), "--perturb" if args.perturb else "--preset") from exc
    return list(dict.fromkeys(out))  # a level asked twice runs once


def _stamp(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """What decides a level's maps (localisation) or scores (classifier)."""
    stamp: dict[str, Any] = {
        **maps_stamp(args, model_spec(args)),
        "task": task,
        "batch_size": args.batch_size,  # kernels may round differently for another batch
        "seed": args.seed,
    }
    if task == "classification":  # its saved scores carry each image's label and notes
        stamp.update(
            crop=args.crop,
            crop_stride=args.crop_stride,
            desensitised=args.desensitised,
            mask_threshold=args.mask_threshold,
            mask_size_policy=args.mask_size_policy,
        )
        score = run_score_rule(args.model_path, task, args.desensitised)
        if score != NOT_PRISTINE:  # three image classes: P(tampered) (earlier runs scored
            stamp["image_score"] = score  # 1 − P(authentic): their scores are not reused)
    else:
        pixel = resolve_thresholds(args, args.model_path, task).pixel
        stamp["threshold"] = pixel  # bin/ maps are written at it
    return stamp


def _task(args: argparse.Namespace, description: CheckpointDescription) -> str:
    if args.task != "auto":
        return args.task
    return "classification" if description.is_classifier else "localization"


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    sets = parse_sets(args.sets) if args.sets else []
    if args.sets_file:
        sets = checked_sets([*sets, *read_sets_file(args.sets_file)], "--sets and --sets-file")
    if not sets:
        raise UsageError("no test sets", "--sets", "give NAME=LIST items or --sets-file")
    names = [s.name for s in sets]
    if args.th_from and args.th_from not in names:
        raise UsageError(f"no set named {args.th_from!r} (sets: {', '.join(names)})", "--th-from")
    if args.th_from and len(sets) < 2:
        raise UsageError("needs another set to report at the chosen thresholds", "--th-from")
    perturbations = _perturbations(args)
    description = describe_checkpoint(args.model_path)
    task = _task(args, description)
    if task == "classification" and not option_given(argv, "--desensitised"):
        args.desensitised = CLASSIFIER_DESENSITISED  # as infer_mvss_cls.py
    if task == "classification" and not option_given(argv, "--mask"):
        args.mask_threshold = DEFAULT_MASK_THRESHOLD  # as infer_mvss_cls.py
    thresholds = resolve_thresholds(args, args.model_path, task)
    resized = description.resized if task == "classification" else None
    classifier_crops(args, description.crop, resized, option_given(argv, "--resize"))
    check_stride(args.crop_stride, args.crop, "--crop-stride", "--crop")
    if task == "classification":
        check_whole_image_size(args.crop, args.resize)
    require_writable_dir(args.save_dir, "--save_dir")
    loaded = load_sets(sets, args.data_root)
    spec = model_spec(args)  # validates device and precision before the group starts
    opts = run_options(args, spec)
    out = Path(args.save_dir) / Path(args.model_path).stem
    stamp = _stamp(args, task)
    stale = stale_levels(out, loaded, perturbations, stamp)
    if stale and not args.overwrite:
        folder, why = stale[0]
        raise UsageError(
            f"{len(stale)} level folder(s) hold results made otherwise ({why})",
            f"--save_dir: {folder}",
            "use another --save_dir, or --overwrite to recompute them",
        )
    try:
        opts = replace(opts, device=dist.init_from_env(args.device))
        if dist.is_main():
            for folder, _ in stale:
                shutil.rmtree(folder)
        dist.barrier()
        model = load_model(args, spec, opts.device, task)
        runner = _classification if task == "classification" else _localization
        failed = runner(args, model, loaded, perturbations, out, opts, stamp, thresholds)
    finally:
        dist.shutdown()
    return EXIT_SOME_FAILED if failed else 0


LevelRunner = Callable[[LoadedSet, Perturbation | None, Path], tuple[Any, Any]]


def _sweep(
    loaded: list[LoadedSet],
    perturbations: list[Perturbation],
    out: Path,
    run_level: LevelRunner,
    stamp: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every set at every level: (summaries by set and level, each set's clean extra)."""
    results: dict[str, dict[str, Any]] = {}
    clean: dict[str, Any] = {}
    for data in loaded:
        results[data.name] = {}
        for p in [None, *perturbations]:
            folder = out / data.name / level_name(p)
            if dist.is_main():
                write_stamp(folder, level_stamp(stamp, data, p))
            dist.barrier()
            summary, extra = run_level(data, p, folder)
            results[data.name][level_name(p)] = summary
            if p is None:
                clean[data.name] = extra
    return results, clean


def _localization(
    args: argparse.Namespace,
    model: Any,
    loaded: list[LoadedSet],
    perturbations: list[Perturbation],
    out: Path,
    opts: Any,
    stamp: dict[str, Any],
    thresholds: Thresholds,
) -> bool:
    settings = replace(eval_settings(args, thresholds), quiet=True)

    def level(data: LoadedSet, p: Perturbation | None, where: Path) -> tuple[Any, Any]:
        return run_localization_level(model, data, p, where, opts, settings)

    results, failures = _sweep(loaded, perturbations, out, level, stamp)
    if not dist.is_main():
        return False
    chosen, rescored = None, None
    if args.th_from:
        source = next(d for d in loaded if d.name == args.th_from)
        pred_dir = out / source.name / "none" / "pred"
        chosen = choose_from_maps(
            source.records,
            pred_dir,
            settings.masks,
            settings.empty_f1,
            source.name,
            failures=failures[source.name],
            checkpoint_sha256=stamp["checkpoint_sha256"],
            score=run_score_rule(args.model_path, "localization", args.desensitised),
        )
        rescored = {
            d.name: rescore_at(d, out / d.name / "none", settings, chosen, failures[d.name])
            for d in loaded
            if d.name != args.th_from
        }
    _report(
        out,
        perturbations,
        results,
        "localization",
        thresholds,
        chosen,
        rescored,
        loaded,
        args.mask_threshold,
    )
    return _any_failed(results)


def _classification(
    args: argparse.Namespace,
    model: Any,
    loaded: list[LoadedSet],
    perturbations: list[Perturbation],
    out: Path,
    opts: Any,
    stamp: dict[str, Any],
    thresholds: Thresholds,
) -> bool:
    settings = eval_settings(args, thresholds)
    cls = ClassifierSettings(
        args.crop, args.crop_stride, args.resize, thresholds.image, args.batch_size, args.workers
    )

    def level(data: LoadedSet, p: Perturbation | None, where: Path) -> tuple[Any, Any]:
        return run_classifier_level(model, data, p, where, opts, cls, settings)

    results, scores = _sweep(loaded, perturbations, out, level, stamp)
    if not dist.is_main():
        return False
    chosen, rescored = None, None
    if args.th_from:
        source = next(d for d in loaded if d.name == args.th_from)
        ok = [r for _, r in scores[source.name] if "error" not in r]
        chosen = choose_from_scores(
            [r["score"] for r in ok],
            [r["label"] for r in ok],
            source.name,
            stamp["checkpoint_sha256"],
            run_score_rule(args.model_path, "classification", args.desensitised),
        )
        rescored = {
            d.name: rescore_classifier_at(d, out / d.name / "none", scores[d.name], chosen)
            for d in loaded
            if d.name != args.th_from
        }
    _report(
        out,
        perturbations,
        results,
        "classification",
        thresholds,
        chosen,
        rescored,
        loaded,
        args.mask_threshold,
    )
    return _any_failed(results)


# task → (table rows, rows repeated at the chosen thresholds, metrics plotted per level)
_TABLES = {
    "localization": (LOCALIZATION_ROWS, LOCALIZATION_AT_THRESHOLD, LOCALIZATION_CURVES),
    "classification": (CLASSIFIER_ROWS, CLASSIFIER_AT_THRESHOLD, CLASSIFIER_CURVES),
}


def _report(
    out: Path,
    perturbations: list[Perturbation],
    results: dict[str, dict[str, Any]],
    task: str,
    thresholds: Thresholds,
    chosen: ChosenThresholds | None,
    rescored: dict[str, Any] | None,
    loaded: list[LoadedSet],
    mask_threshold: int,
) -> None:
    rows, at_threshold, curves = _TABLES[task]
    calibration = chosen.calibration if chosen else thresholds.calibration
    _record_thresholds(out, results, thresholds, task)
    clean = {}
    for name, levels in results.items():
        summary = dict(levels["none"] or {})
        folder = out / name / "none"
        if (folder / "per_image.csv").is_file():
            summary.update(calibration_report(folder, calibration, f"{name}: image scores"))
        data = next(d for d in loaded if d.name == name)
        summary.update(mask_rule_report(data.records, mask_threshold))
        for key, value in (data.paper or {}).items():
            summary[f"{key} (paper)"] = value
        rule = mask_rule_line(summary)
        if rule:
            print(f"{name}: {rule}")
        clean[name] = summary
    view = None if chosen is None else _chosen_view(chosen)
    print(thresholds.line(task))  # the plain rows' thresholds
    if chosen is not None:
        values = chosen.values() or "none could be chosen"
        print(f"the '@ th from' rows: {values}, {chosen.describe()}")
        # the tables' calibration rows use the chosen set's, not the run's
        print(
            "image-score calibration in the tables: "
            + (
                f"{calibration.method}, fitted on {calibration.fitted_on}"
                if calibration is not None
                else f"none (none could be fitted on {chosen.chosen_on})"
            )
        )
    for line in [] if chosen is None else _unchosen_lines(chosen):
        print(line, file=sys.stderr)
    published = sorted({f"{k} (paper)" for d in loaded for k in (d.paper or {})})
    table_rows = (*rows, *published, *CALIBRATION_ROWS, "masks_rules_disagree")
    print(combined_table(out, clean, table_rows, at_threshold, view, rescored))
    print(f"\ntables: {out / 'benchmark.md'} (.csv, .json)")
    print(f"reliability diagrams: {out}/<set>/none/reliability.png")
    if chosen is not None:
        path = write_thresholds(out / f"thresholds_from_{chosen.chosen_on}.json", chosen)
        print(f"thresholds for --thresholds: {path}")
    files = robustness_tables(out, perturbations, results, curves) if perturbations else []
    if files:
        print("robustness: " + ", ".join(str(f) for f in files if f.suffix == ".png"))
    for stale in set(out.glob("robustness_*")) - set(files):  # an earlier run's, other sets
        stale.unlink()


def _record_thresholds(
    out: Path, results: dict[str, dict[str, Any]], thresholds: Thresholds, task: str
) -> None:
    """Every level's summary (its summary.json and the combined table's JSON) records
    the thresholds its plain rows were scored at and where they came from, as every
    script's summary does."""
    keys: dict[str, Any] = {
        "thresholds_source": thresholds.source,
        "image_threshold": thresholds.image,
    }
    if task != "classification":
        keys["pixel_threshold"] = thresholds.pixel
    for name, levels in results.items():
        for level, summary in levels.items():
            if summary is None:
                continue
            summary.update(keys)
            path = out / name / level / "summary.json"
            if path.is_file():
                write_json(path, {**json.loads(path.read_text()), **keys})


def _unchosen_lines(chosen: ChosenThresholds) -> list[str]:
    """A warning for each threshold the set could not choose: the file leaves it unset
    and the rows at the chosen thresholds take the release's 0.5 for it."""
    needs = {
        "pixel": "manipulated images with masks",
        "image": "authentic and manipulated images",
    }
    kinds = ["image"] if chosen.task == "classification" else ["pixel", "image"]
    return [
        f"warning: no {kind} threshold could be chosen on {chosen.chosen_on} (it needs "
        f"{needs[kind]}; {chosen.images} labelled images scored): its rows "
        f"'@ th from {chosen.chosen_on}' and the thresholds file use the release's 0.5"
        for kind in kinds
        if getattr(chosen, kind) is None
    ]


def _chosen_view(chosen: ChosenThresholds) -> dict[str, Any]:
    """The chosen thresholds as the table's footnote lists them."""
    view: dict[str, Any] = {"chosen_on": chosen.chosen_on}
    if chosen.task != "classification":
        view.update(pixel_threshold=chosen.pixel, pixel_f1_there=chosen.pixel_f1_there)
    view.update(image_threshold=chosen.image, image_f1_there=chosen.image_f1_there)
    return view


def _any_failed(results: dict[str, dict[str, Any]]) -> bool:
    return any(s and s.get("num_failed") for levels in results.values() for s in levels.values())


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
