"""Thresholds chosen once and used everywhere; calibrated image scores; the mask rule."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import make_tiny_checkpoint, make_tiny_dataset

import benchmark
import infer_3labels_merge_calmetrics
import infer_mvss_calmetrics
import infer_mvss_cls
from common.core.checkpoint import checkpoint_digest
from common.core.user_errors import UsageError
from common.data.masks import count_rule_disagreements
from common.evaluation.calibration import expected_calibration_error, fit_platt
from common.evaluation.thresholds import (
    ChosenThresholds,
    read_thresholds,
    stored_thresholds,
    write_thresholds,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("thresholds")
    return {
        "root": root,
        "list": make_tiny_dataset(root / "data", n_tampered=4, n_authentic=3, corrupt=False),
        "three_list": make_tiny_dataset(root / "d3", three_class=True, corrupt=False),
        "ck": make_tiny_checkpoint(root / "ck.pt"),
        "other": make_tiny_checkpoint(root / "other.pt", seed=1),
        "ck3": make_tiny_checkpoint(root / "ck3.pt", nclass=3),
        "ckcls": make_tiny_checkpoint(root / "ckcls.pt", cls_head="max"),
    }


def _summary(save, ckpt_stem, list_stem="test"):
    return json.loads((save / list_stem / ckpt_stem / "summary.json").read_text())


def _infer(world, save, *extra, ck="ck"):
    argv = ["--model_path", str(world[ck]), "--test_file", str(world["list"])]
    argv += ["--save_dir", str(save), "--resize", "64", "--workers", "0", *extra]
    return infer_mvss_calmetrics.main(argv)


def test_a_thresholds_file_round_trips(tmp_path):
    from common.evaluation.calibration import Calibration

    chosen = ChosenThresholds(
        task="localization",
        pixel=0.31,
        image=0.62,
        chosen_on="val",
        images=60,
        checkpoint_sha256="ab" * 32,
        pixel_f1_there=0.5,
        image_f1_there=0.7,
        calibration=Calibration(1.5, -0.4, "val", 60, 0.2, 0.05),
    )
    path = write_thresholds(tmp_path / "t.json", chosen)
    assert read_thresholds(path) == chosen
    data = json.loads(path.read_text())
    assert data["criterion"]["pixel"].startswith("mean per-image pixel-F1")
    (tmp_path / "bad.json").write_text('{"version": 1, "task": "x", "pixel": 3}')
    with pytest.raises(UsageError, match="not a usable thresholds file"):
        read_thresholds(tmp_path / "bad.json")


def test_written_thresholds_are_used_and_refused_for_another_checkpoint(world, tmp_path, capsys):
    chosen_file = tmp_path / "th.json"
    _infer(world, tmp_path / "a", "--write-thresholds", str(chosen_file))
    chosen = read_thresholds(chosen_file)
    assert chosen.checkpoint_sha256 == checkpoint_digest(world["ck"])
    assert chosen.chosen_on == "test" and chosen.images == 7
    assert chosen.pixel is not None and chosen.image is not None
    capsys.readouterr()
    _infer(world, tmp_path / "b", "--thresholds", str(chosen_file))
    printed = capsys.readouterr().out
    assert f"pixel {chosen.pixel:.3g}" in printed and str(chosen_file) in printed
    summary = _summary(tmp_path / "b", "ck")
    assert summary["pixel_threshold"] == chosen.pixel
    assert summary["image_threshold"] == chosen.image
    assert summary["image_f1"] >= json.loads(json.dumps(chosen.image_f1_there)) - 1e-9
    # the command line still wins over the file, threshold by threshold
    _infer(world, tmp_path / "c", "--thresholds", str(chosen_file), "--image-th", "0.9")
    summary = _summary(tmp_path / "c", "ck")
    assert summary["image_threshold"] == 0.9 and summary["pixel_threshold"] == chosen.pixel
    # chosen for another checkpoint: one line, unless forced
    assert _infer(world, tmp_path / "d", "--thresholds", str(chosen_file), ck="other") == 2
    assert "chosen for another checkpoint" in capsys.readouterr().err
    forced = ["--thresholds", str(chosen_file), "--force-thresholds"]
    assert _infer(world, tmp_path / "e", *forced, ck="other") in (0, 3)


def test_the_checkpoints_own_thresholds_apply_unless_a_file_or_option_says_otherwise(
    world, tmp_path, capsys
):
    state = torch.load(world["ck"], weights_only=True)
    state["thresholds"] = ChosenThresholds("localization", 0.2, 0.7, "val", 9).to_dict()
    ckpt = tmp_path / "with_thresholds.pt"
    torch.save(state, ckpt)
    assert stored_thresholds(ckpt).pixel == 0.2
    argv = ["--model_path", str(ckpt), "--test_file", str(world["list"]), "--save_dir"]
    infer_mvss_calmetrics.main([*argv, str(tmp_path / "o"), "--resize", "64", "--workers", "0"])
    assert "the checkpoint's own, chosen on val (9 images)" in capsys.readouterr().out
    summary = _summary(tmp_path / "o", "with_thresholds")
    assert (summary["pixel_threshold"], summary["image_threshold"]) == (0.2, 0.7)
    infer_mvss_calmetrics.main(
        [*argv, str(tmp_path / "p"), "--resize", "64", "--workers", "0", "--th", "0.5"]
    )
    assert _summary(tmp_path / "p", "with_thresholds")["pixel_threshold"] == 0.5


def _with_stored(world, tmp_path, ck: str, task: str) -> Path:
    """World checkpoint ``ck`` with thresholds and a calibration stored as ``task``'s."""
    state = torch.load(world[ck], weights_only=True)
    chosen = ChosenThresholds(
        task,
        0.2,
        0.7,
        "val",
        9,
        calibration=fit_platt(np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 1, 0, 1]), "val"),
    )
    state["thresholds"] = chosen.to_dict()
    torch.save(state, tmp_path / f"{ck}_{task}.pt")
    return tmp_path / f"{ck}_{task}.pt"


def test_a_checkpoints_own_thresholds_stay_within_their_kind_of_score(world, tmp_path, capsys):
    """A classifier's image scores are not map maxima: its stored threshold and
    calibration are not applied by the map scripts, nor a map model's by the classifier
    script (a thresholds file crossing over is refused the same way)."""
    cls = _with_stored(world, tmp_path, "ckcls", "classification")
    argv = ["--model_path", str(cls), "--test_file", str(world["list"]), "--save_dir"]
    infer_mvss_calmetrics.main([*argv, str(tmp_path / "o"), "--resize", "64", "--workers", "0"])
    summary = _summary(tmp_path / "o", cls.stem)
    assert (summary["pixel_threshold"], summary["image_threshold"]) == (0.5, 0.5)
    assert "image_ece_calibrated" not in summary
    line = "the checkpoint's own were chosen for a classification model: not used"
    assert line in summary["thresholds_source"] and line in capsys.readouterr().out
    maps = _with_stored(world, tmp_path, "ckcls", "localization")
    argv = ["--model_path", str(maps), "--test_file", str(world["list"]), "--save_dir"]
    infer_mvss_cls.main(
        [*argv, str(tmp_path / "c"), "--crop", "64", "--crop-stride", "64", "--workers", "0"]
    )
    summary = _summary(tmp_path / "c", maps.stem)
    assert summary["image_threshold"] == 0.5 and "image_ece_calibrated" not in summary
    assert "chosen for a localization model: not used" in summary["thresholds_source"]


def test_three_class_and_classifier_scripts_choose_and_read_their_own(world, tmp_path):
    three = tmp_path / "three.json"
    argv = ["--model_path", str(world["ck3"]), "--test_file", str(world["three_list"])]
    argv += ["--save_dir", str(tmp_path / "o3"), "--tile", "64", "--tile-stride", "32"]
    argv += ["--workers", "0"]
    infer_3labels_merge_calmetrics.main([*argv, "--write-thresholds", str(three)])
    assert read_thresholds(three).task == "three_class"
    infer_3labels_merge_calmetrics.main([*argv, "--thresholds", str(three), "--image-th", "0.4"])
    summary = _summary(tmp_path / "o3", "ck3")
    assert summary["image_threshold"] == 0.4
    assert summary["merged"]["image_threshold"] == 0.4  # the merged map's image decision
    cls = tmp_path / "cls.json"
    argv = ["--model_path", str(world["ckcls"]), "--test_file", str(world["list"])]
    argv += ["--save_dir", str(tmp_path / "oc"), "--crop", "64", "--crop-stride", "64"]
    argv += ["--workers", "0"]
    infer_mvss_cls.main([*argv, "--write-thresholds", str(cls)])
    chosen = read_thresholds(cls)
    assert chosen.task == "classification" and chosen.pixel is None
    infer_mvss_cls.main([*argv, "--thresholds", str(cls)])
    assert _summary(tmp_path / "oc", "ckcls")["threshold"] == chosen.image
    # a classifier's file is refused by a localisation script
    assert _infer(world, tmp_path / "x", "--thresholds", str(cls)) == 2


def test_the_benchmark_writes_thresholds_the_scripts_read(world, tmp_path):
    out = tmp_path / "bench"
    sets = [f"a={world['list']}", f"b={world['list']}"]
    argv = ["--model_path", str(world["ck"]), "--sets", *sets, "--save_dir", str(out)]
    argv += ["--resize", "64", "--workers", "0", "--th-from", "a"]
    assert benchmark.main(argv) == 0
    written = out / "ck" / "thresholds_from_a.json"
    chosen = read_thresholds(written)
    assert chosen.checkpoint_sha256 == checkpoint_digest(world["ck"])
    table = json.loads((out / "ck" / "benchmark.json").read_text())
    assert table["thresholds"]["pixel_threshold"] == chosen.pixel
    assert "image_ece" in table["sets"]["b"]
    assert (out / "ck" / "b" / "none" / "reliability.png").is_file()
    _infer(world, tmp_path / "s", "--thresholds", str(written))
    assert _summary(tmp_path / "s", "ck")["pixel_threshold"] == chosen.pixel


def test_thresholds_a_set_cannot_choose_are_the_files_in_the_benchmarks_rows(
    world, tmp_path, capsys
):
    """A set without authentic images chooses no image threshold: the file leaves it
    unset (0.5 when read), and the benchmark's rows at the chosen thresholds must be
    what that file gives, said in a warning, not the checkpoint's own threshold."""
    lines = world["list"].read_text().splitlines()
    manipulated = world["list"].with_name("manipulated.txt")
    manipulated.write_text("\n".join(x for x in lines if not x.endswith(" 0")) + "\n")
    state = torch.load(world["ck"], weights_only=True)
    state["thresholds"] = ChosenThresholds("localization", 0.2, 0.7, "val", 9).to_dict()
    ckpt = tmp_path / "own.pt"
    torch.save(state, ckpt)
    out = tmp_path / "bench"
    argv = ["--model_path", str(ckpt), "--sets", f"m={manipulated}", f"b={world['list']}"]
    argv += ["--save_dir", str(out), "--resize", "64", "--workers", "0", "--th-from", "m"]
    assert benchmark.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: no image threshold could be chosen on m" in err
    written = out / "own" / "thresholds_from_m.json"
    chosen = read_thresholds(written)
    assert chosen.image is None and chosen.pixel is not None
    rows = json.loads((out / "own" / "benchmark.json").read_text())["at_chosen_thresholds"]
    infer = ["--model_path", str(ckpt), "--test_file", str(world["list"]), "--resize", "64"]
    infer += ["--save_dir", str(tmp_path / "s"), "--workers", "0", "--thresholds", str(written)]
    infer_mvss_calmetrics.main(infer)
    applied = _summary(tmp_path / "s", "own")
    assert applied["image_threshold"] == 0.5
    for key in ("pixel_f1", "image_f1", "image_accuracy", "com_f1"):
        assert rows["b"][key] == pytest.approx(applied[key]), key


def test_platt_calibration_is_monotone_and_improves_ece_where_fitted():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    # overconfident scores: authentic images score high too
    scores = np.clip(0.55 + 0.3 * labels + rng.normal(0, 0.12, 400), 0, 1)
    calibration = fit_platt(scores, labels, "val")
    assert calibration is not None and calibration.a > 0
    grid = np.linspace(0, 1, 101)
    assert np.all(np.diff(calibration(grid)) > 0)  # strictly increasing: AUC unchanged
    before = expected_calibration_error(scores, labels)
    after = expected_calibration_error(calibration(scores), labels)
    assert after < before / 2
    assert calibration.ece_before == pytest.approx(before)
    assert calibration.ece_after == pytest.approx(after)
    assert fit_platt(scores, np.ones_like(labels), "val") is None  # one class: no fit
    assert fit_platt(1 - scores, labels, "val") is None  # ranks the wrong way: refused


def test_a_jpeg_saved_mask_is_counted_where_the_rules_disagree(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (30, 33), 17, 255, -1)  # edges across 8×8 blocks: JPEG rings there
    cv2.imwrite(str(tmp_path / "clean.png"), mask)
    cv2.imwrite(str(tmp_path / "saved.jpg"), mask, [cv2.IMWRITE_JPEG_QUALITY, 50])
    cv2.imwrite(str(tmp_path / "index.png"), (mask > 0).astype(np.uint8))
    paths = [tmp_path / n for n in ("clean.png", "saved.jpg", "index.png", "missing.png")]
    assert count_rule_disagreements(paths) == (1, 3)


def test_the_mask_rule_is_the_release_s_by_default_and_says_where_they_disagree(
    world, tmp_path, capsys
):
    root = tmp_path / "jpeg"
    list_file = make_tiny_dataset(root, n_tampered=2, n_authentic=1, corrupt=False)
    for i in range(2):  # ground truth saved as JPEG: grey ringing around the region
        mask = cv2.imread(str(root / f"mask_{i:02d}.png"), 0)
        cv2.imwrite(str(root / f"mask_{i:02d}.jpg"), mask, [cv2.IMWRITE_JPEG_QUALITY, 30])
    list_file.write_text(
        list_file.read_text().replace(".png 1", ".jpg 1").replace("mask_", "mask_")
    )
    argv = ["--model_path", str(world["ck"]), "--test_file", str(list_file)]
    argv += ["--save_dir", str(tmp_path / "o"), "--resize", "64", "--workers", "0"]
    infer_mvss_calmetrics.main(argv)
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "o" / "test" / "ck" / "summary.json").read_text())
    assert summary["mask_threshold"] == 0 and summary["masks_checked"] == 2
    assert summary["masks_rules_disagree"] >= 1
    assert "--mask-threshold 127 for the other rule" in printed


def test_thresholds_with_a_missing_checkpoint_is_the_loaders_one_line(world, tmp_path, capsys):
    chosen = write_thresholds(
        tmp_path / "t.json", ChosenThresholds("localization", 0.4, 0.6, "val", 9, "ab" * 32)
    )
    argv = ["--model_path", str(tmp_path / "nope.pt"), "--test_file", str(world["list"])]
    argv += ["--save_dir", str(tmp_path / "o"), "--thresholds", str(chosen)]
    assert infer_mvss_calmetrics.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint not found" in err


def test_platt_stays_finite_on_separable_and_constant_scores():
    import warnings

    separable = np.array([0.0] * 20 + [1.0] * 20)
    labels = np.array([0] * 20 + [1] * 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way
        fit = fit_platt(separable, labels, "val")
    assert fit is not None and 0 < fit.a < 5
    assert 0 < float(fit(0.0)) < 0.5 < float(fit(1.0)) < 1  # never a certain 0 or 1
    assert fit_platt(np.zeros(8), np.array([0, 1] * 4), "val") is None  # constant: no fit


def test_degenerate_choices_stay_inside_the_open_interval():
    from common.evaluation.thresholds import best_image_threshold

    low, _ = best_image_threshold([0.0] * 4 + [0.0] * 4, [0] * 4 + [1] * 4)
    high, _ = best_image_threshold([0.9999999, 1.0], [0, 1], "precision_recall")
    assert 0 < low < 1 and 0 < high < 1


def test_maps_are_found_for_thresholds_as_the_evaluation_finds_them(world, tmp_path):
    """--pred-dir maps saved as JPEG (any name the evaluation accepts) count too."""
    maps = tmp_path / "maps"
    maps.mkdir()
    rng = np.random.default_rng(0)
    for line in world["list"].read_text().splitlines():
        stem = line.split()[0].rsplit(".", 1)[0]
        cv2.imwrite(str(maps / f"{stem}.jpg"), rng.integers(0, 255, (72, 88), np.uint8))
    out = tmp_path / "t.json"
    argv = ["--pred-dir", str(maps), "--test_file", str(world["list"])]
    argv += ["--save_dir", str(tmp_path / "o"), "--write-thresholds", str(out)]
    assert infer_mvss_calmetrics.main(argv) == 0
    assert read_thresholds(out).images == 7


def test_an_unwritable_thresholds_file_is_refused_before_the_run(world, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    code = _infer(world, tmp_path / "o", "--write-thresholds", str(tmp_path / "a_file" / "t.json"))
    assert code == 2 and "--write-thresholds" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_classifiers_th_is_its_image_threshold_everywhere(world):
    import argparse

    from common.evaluation.arguments import resolve_thresholds

    args = argparse.Namespace(th=0.7, image_th=None, thresholds=None, force_thresholds=False)
    assert resolve_thresholds(args, world["ckcls"], "classification").image == 0.7
    assert resolve_thresholds(args, world["ck"], "localization").image == 0.5


def test_thresholds_apply_only_to_the_score_they_were_chosen_on(world, tmp_path, capsys):
    """A three-class model's stored thresholds were chosen on 1 − P(pristine). A binary
    run under --desensitised negative scores P(tampered), so there they are not used
    (under positive they are); a thresholds file records what it was chosen on, and one
    chosen on the other score is refused."""
    three = _with_stored(world, tmp_path, "ck3", "three_class")
    argv = ["--model_path", str(three), "--test_file", str(world["three_list"])]
    argv += ["--resize", "64", "--workers", "0", "--save_dir"]
    infer_mvss_calmetrics.main([*argv, str(tmp_path / "pos"), "--desensitised", "positive"])
    assert _summary(tmp_path / "pos", three.stem)["pixel_threshold"] == 0.2
    infer_mvss_calmetrics.main([*argv, str(tmp_path / "neg"), "--desensitised", "negative"])
    summary = _summary(tmp_path / "neg", three.stem)
    assert (summary["pixel_threshold"], summary["image_threshold"]) == (0.5, 0.5)
    line = "the checkpoint's own were chosen on 1 - P(pristine), this run scores P(tampered)"
    assert line in summary["thresholds_source"]
    written = tmp_path / "neg.json"
    neg = [*argv, str(tmp_path / "neg2"), "--desensitised", "negative"]
    infer_mvss_calmetrics.main([*neg, "--write-thresholds", str(written)])
    assert read_thresholds(written).score == "P(tampered)"
    capsys.readouterr()
    pos = [*argv, str(tmp_path / "pos2"), "--desensitised", "positive"]
    assert infer_mvss_calmetrics.main([*pos, "--thresholds", str(written)]) == 2
    assert "chosen on scores that are P(tampered), this run's are" in capsys.readouterr().err
    assert infer_mvss_calmetrics.main([*neg, "--thresholds", str(written)]) == 0


def test_a_three_class_image_head_keeps_what_its_thresholds_were_chosen_on():
    from common.training.config import read_defaults
    from common.training.tasks import ClassificationTask

    root = Path(__file__).resolve().parents[1]
    cfg, _ = read_defaults(root / "configs" / "train_demo_cls.yaml")
    cfg.update(head="linear", num_image_classes=3)
    for policy, score in (("negative", "P(tampered)"), ("positive", "1 - P(pristine)")):
        assert ClassificationTask({**cfg, "desensitised": policy}).score == score
    assert ClassificationTask({**cfg, "num_image_classes": 2}).score == "1 - P(pristine)"


def test_thresholds_chosen_on_saved_maps_record_what_made_them(world, tmp_path):
    """--pred-dir on maps this toolkit wrote: the thresholds record the checkpoint and the
    score the maps are (P(tampered) for a three-class model under negative), read from
    the maps.json beside them; they recorded no checkpoint and 1 − P(pristine). Maps from
    elsewhere (no maps.json) keep that default."""
    from common.core.checkpoint import checkpoint_digest

    argv = ["--model_path", str(world["ck3"]), "--test_file", str(world["three_list"])]
    argv += ["--resize", "64", "--workers", "0", "--desensitised", "negative"]
    assert infer_mvss_calmetrics.main([*argv, "--save_dir", str(tmp_path / "run")]) == 0
    (pred,) = (tmp_path / "run").rglob("pred")
    written = tmp_path / "t.json"
    again = ["--pred-dir", str(pred), "--test_file", str(world["three_list"])]
    again += ["--desensitised", "negative", "--save_dir", str(tmp_path / "o")]
    assert infer_mvss_calmetrics.main([*again, "--write-thresholds", str(written)]) == 0
    chosen = read_thresholds(written)
    assert chosen.score == "P(tampered)"
    assert chosen.checkpoint_sha256 == checkpoint_digest(world["ck3"])
    (pred.parent / "maps.json").unlink()  # maps from elsewhere
    assert infer_mvss_calmetrics.main([*again, "--write-thresholds", str(written)]) == 0
    chosen = read_thresholds(written)
    assert (chosen.score, chosen.checkpoint_sha256) == ("1 - P(pristine)", None)
