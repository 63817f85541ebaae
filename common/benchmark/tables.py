"""A benchmark's tables and plots: sets side by side, and metrics against degradation.

- ``benchmark.md|csv|json``: the clean run, metrics as rows, sets as columns (the
  release's definitions); with ``--th-from`` the threshold-dependent metrics again at the
  chosen thresholds, for every set but the one they were chosen on.
- ``robustness_<kind>.md|csv`` and ``robustness_<kind>.png`` per perturbation kind:
  levels (``none`` first) × metrics × sets; the plot has one panel per metric and one
  line per set (matplotlib, Agg backend: no display needed).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.benchmark.degradations import Perturbation

LOCALIZATION_ROWS = (
    "pixel_f1",
    "pixel_iou",
    "pixel_auc",
    "pixel_f1_best_threshold",
    "pixel_fpr_authentic",
    "image_auc",
    "image_f1",
    "image_accuracy",
    "com_f1",
    "num_images",
    "num_failed",
    "num_warnings",
)
LOCALIZATION_AT_THRESHOLD = ("pixel_f1", "pixel_iou", "image_f1", "image_accuracy", "com_f1")
LOCALIZATION_CURVES = ("pixel_f1", "pixel_auc", "image_auc", "image_f1", "com_f1")
CLASSIFIER_ROWS = (
    "auc",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "mcc",
    "fpr",
    "num_images",
    "num_failed",
    "num_warnings",
)
CLASSIFIER_AT_THRESHOLD = ("accuracy", "precision", "recall", "f1", "mcc", "fpr")
CLASSIFIER_CURVES = ("auc", "accuracy", "f1")
# Image-score calibration on the clean level (ECE, 10 bins): raw, and calibrated where a
# calibration was chosen (--th-from), given (--thresholds) or stored in the checkpoint.
CALIBRATION_ROWS = ("image_ece", "image_ece_calibrated")


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def combined_table(
    out: Path,
    summaries: dict[str, dict[str, Any]],
    rows: Sequence[str],
    at_threshold: Sequence[str],
    chosen: dict[str, Any] | None = None,
    rescored: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Write benchmark.md/.csv/.json; returns the Markdown."""
    sets = list(summaries)
    table: list[list[Any]] = [[key, *(summaries[s].get(key) for s in sets)] for key in rows]
    if chosen and rescored is not None:
        label = f"@ th from {chosen['chosen_on']}"
        for key in at_threshold:
            table.append(
                [
                    f"{key} {label}",
                    *(rescored[s].get(key) if s in rescored else "(chosen here)" for s in sets),
                ]
            )
    md = _markdown(["metric", *sets], table)
    if chosen:
        md += "\n\n" + ", ".join(f"{k}: {_cell(v)}" for k, v in chosen.items())
    (out / "benchmark.md").write_text(md + "\n")
    with open(out / "benchmark.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["metric", *sets])
        writer.writerows(table)
    (out / "benchmark.json").write_text(
        json.dumps(
            {"sets": summaries, "thresholds": chosen, "at_chosen_thresholds": rescored},
            indent=2,
            default=str,
        )
    )
    return md


def robustness_tables(
    out: Path,
    perturbations: Sequence[Perturbation],
    results: dict[str, dict[str, dict[str, Any]]],
    metrics: Sequence[str],
) -> list[Path]:
    """``results[set][level name]`` → per kind the Markdown/CSV tables and the plot;
    returns the files written."""
    written: list[Path] = []
    kinds = list(dict.fromkeys(p.kind for p in perturbations))
    sets = list(results)
    for kind in kinds:
        levels = ["none", *(p.name for p in perturbations if p.kind == kind)]
        labels = ["none", *(f"{p.level:g}" for p in perturbations if p.kind == kind)]
        sections = [f"# {kind}\n"]
        rows = []
        for metric in metrics:
            table = [
                [label, *(results[s].get(level, {}).get(metric) for s in sets)]
                for level, label in zip(levels, labels, strict=True)
            ]
            sections.append(f"## {metric}\n\n" + _markdown([kind, *sets], table) + "\n")
            for level, label in zip(levels, labels, strict=True):
                for s in sets:
                    rows.append([kind, label, s, metric, results[s].get(level, {}).get(metric)])
        md_path, csv_path = out / f"robustness_{kind}.md", out / f"robustness_{kind}.csv"
        md_path.write_text("\n".join(sections))
        with open(csv_path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["kind", "level", "set", "metric", "value"])
            writer.writerows(rows)
        png = out / f"robustness_{kind}.png"
        _plot(png, kind, labels, levels, sets, results, metrics)
        written += [md_path, csv_path, png]
    return written


def _plot(
    path: Path,
    kind: str,
    labels: Sequence[str],
    levels: Sequence[str],
    sets: Sequence[str],
    results: dict[str, dict[str, dict[str, Any]]],
    metrics: Sequence[str],
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    x = list(range(len(levels)))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for s in sets:
            values = [results[s].get(level, {}).get(metric) for level in levels]
            ys = [float("nan") if v is None else v for v in values]
            ax.plot(x, ys, marker="o", label=s)
        ax.set_title(metric)
        ax.set_xticks(x, labels, rotation=45)
        ax.set_xlabel(kind)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
