"""predict(), tiling, and the three inference scripts end to end on tiny data."""

from __future__ import annotations

import csv
import json
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import infer_mvss_calmetrics
import infer_mvss_cls
from common.core.reports import EXIT_SOME_FAILED
from common.core.runtime import cpu_kernel_signature
from common.data.transforms import normalize_bgr
from common.inference.single_image import RunOptions, predict, predict_tiled, tile_windows
from models import MVSSOutput, get_mvss, load_weights
from tests.helpers import (
    make_tiny_checkpoint,
    make_tiny_dataset,
    run_three_class_inference,
    threads,
)


def test_predict_follows_release_pipeline(tiny_model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 70, 3), dtype=np.uint8)
    tiny_model.train()
    levels, score = predict(tiny_model, image, resize=128)
    assert not tiny_model.training  # always evaluated in eval mode
    net_in = cv2.resize(image, (128, 128), interpolation=cv2.INTER_LINEAR)
    with torch.inference_mode():
        _, seg = tiny_model(normalize_bgr(net_in)[None])
    # the release: floor(255·p) at the network's size, then the uint8 map resized
    net_levels = np.floor(torch.sigmoid(seg)[0, 0].numpy() * 255).astype(np.uint8)
    ref = cv2.resize(net_levels, (70, 90), interpolation=cv2.INTER_LINEAR)
    assert levels.shape == (90, 70) and levels.dtype == np.uint8
    assert np.abs(levels.astype(int) - ref.astype(int)).max() <= 1  # kernels may round
    assert score == float(np.float32(levels.max()) / np.float32(255))  # as the metrics


def test_tile_windows_cover_the_image():
    windows = tile_windows(1000, 700, 512, 384)
    covered = np.zeros((1000, 700), bool)
    for y0, x0, y1, x1 in windows:
        assert y1 - y0 == 512 and x1 - x0 == 512
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tile_windows(100, 80, 512, 256) == [(0, 0, 100, 80)]


class _PointwiseNet(torch.nn.Module):
    """A 1×1-conv 'network': tiling must reproduce its full-image output exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return MVSSOutput(None, self.conv(x))


@pytest.mark.parametrize("blend", ["weighted", "average"])
def test_tiled_equals_full_for_pointwise_model(blend):
    torch.manual_seed(0)
    net = _PointwiseNet().eval()
    image = np.random.default_rng(1).integers(0, 255, (200, 150, 3), dtype=np.uint8)
    tiled = predict_tiled(net, image, RunOptions(tile=96, tile_stride=64, blend=blend))
    with torch.inference_mode():
        full = torch.sigmoid(net(normalize_bgr(image)[None])[1])[0].numpy()
    np.testing.assert_allclose(tiled, full, atol=1e-5)


def test_tiled_equals_untiled_when_one_tile_fits(tiny_model):
    image = np.random.default_rng(2).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    tiled = predict_tiled(tiny_model, image, RunOptions(tile=128, tile_stride=64))[0]
    with torch.inference_mode():
        direct = torch.sigmoid(tiny_model(normalize_bgr(image)[None])[1])[0, 0].numpy()
    np.testing.assert_allclose(tiled, direct, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    list_file = make_tiny_dataset(root / "data")
    ckpt = make_tiny_checkpoint(root / "tiny.pt")
    return root, list_file, ckpt


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _hand_pixel_f1(out, list_file):
    scores = []
    for line in list_file.read_text().split("\n"):
        cols = line.split()
        if len(cols) != 3 or cols[2] == "0":
            continue
        pred = cv2.imread(str(out / "pred" / cols[0].replace(".png", ".png")), 0)
        mask = cv2.imread(str(list_file.parent / cols[1]), 0) > 127
        p = pred / 255.0 > 0.5
        tp, fp, fn = (p & mask).sum(), (p & ~mask).sum(), (~p & mask).sum()
        scores.append(1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def test_infer_calmetrics_end_to_end(tiny_data):
    root, list_file, ckpt = tiny_data
    save = root / "out"
    argv = [
        "--model_path",
        str(ckpt),
        "--test_file",
        str(list_file),
        "--save_dir",
        str(save),
        "--resize",
        "96",
        "--workers",
        "1",
        "--batch-size",
        "2",
        "--overlay",
    ]
    code = infer_mvss_calmetrics.main(argv)
    assert code == EXIT_SOME_FAILED  # the corrupt file in the middle
    out = save / "test" / "tiny"
    rows = _rows(out / "per_image.csv")
    assert len(rows) == 6
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["path"].endswith("corrupt.jpg")
    for i in range(5):
        pred = cv2.imread(str(out / "pred" / f"img_{i:02d}.png"), cv2.IMREAD_UNCHANGED)
        assert pred.shape == (72, 88) and pred.dtype == np.uint8
        assert (out / "bin" / f"img_{i:02d}.png").is_file()
        assert (out / "overlay" / f"img_{i:02d}.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "pixel_f1",
        "pixel_iou",
        "image_auc",
        "image_accuracy",
        "image_sensitivity",
        "image_specificity",
        "image_f1",
        "com_f1",
        "num_images",
        "num_failed",
        "threshold",
    ):
        assert key in summary
    assert summary["num_images"] == 5 and summary["num_failed"] == 1
    assert summary["pixel_f1"] == pytest.approx(_hand_pixel_f1(out, list_file))
    scores = {r["path"].split("/")[-1]: float(r["score"]) for r in rows if r["status"] == "ok"}
    assert scores["img_00.png"] == pytest.approx(
        cv2.imread(str(out / "pred" / "img_00.png"), 0).max() / 255
    )

    # --pred-dir re-evaluates the saved maps to the same numbers
    code = infer_mvss_calmetrics.main(
        ["--test_file", str(list_file), "--save_dir", str(save), "--pred-dir", str(out / "pred")]
    )
    again = json.loads((save / "test" / "eval_pred" / "summary.json").read_text())
    assert again["pixel_f1"] == pytest.approx(summary["pixel_f1"])
    assert again["image_auc"] == summary["image_auc"]

    # --skip-existing resumes: a removed map is recomputed, the others reused
    (out / "pred" / "img_03.png").unlink()
    infer_mvss_calmetrics.main([*argv, "--skip-existing"])
    rows = _rows(out / "per_image.csv")
    status = {r["path"].split("/")[-1]: r["status"] for r in rows}
    assert status["img_03.png"] == "ok" and status["img_00.png"] == "existing"
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["pixel_f1"] == pytest.approx(summary["pixel_f1"])


def test_maps_of_another_checkpoint_are_never_resumed(tiny_data, tmp_path, capsys):
    """Two runs' best.pt write to the same folder (<list>/best): --skip-existing reused
    the first model's maps for the second without a word. Now the folder records what
    made its maps; a resume made otherwise is refused in one line, and a run that
    computes them again first removes them, so no later resume can mix them in."""
    _, list_file, _ = tiny_data
    first = make_tiny_checkpoint(tmp_path / "a" / "best.pt")
    second = make_tiny_checkpoint(tmp_path / "b" / "best.pt", seed=5)
    save = tmp_path / "o"
    out = save / "test" / "best"

    def run(ckpt: Path, *extra: str) -> int:
        argv = ["--model_path", str(ckpt), "--test_file", str(list_file), "--save_dir"]
        return infer_mvss_calmetrics.main([*argv, str(save), "--resize", "64", *extra])

    assert run(first) == EXIT_SOME_FAILED  # the list's corrupt row
    maps = {p.name: p.read_bytes() for p in (out / "pred").glob("*.png")}
    capsys.readouterr()
    assert run(second, "--skip-existing") == 2
    assert "were made otherwise (checkpoint_sha256 differ)" in capsys.readouterr().err
    (out / "pred" / "extra.png").write_bytes(maps["img_00.png"])  # a map of nothing listed
    assert run(second) == EXIT_SOME_FAILED
    assert not (out / "pred" / "extra.png").exists()  # the first model's maps are gone
    assert any(maps[p.name] != p.read_bytes() for p in (out / "pred").glob("*.png"))
    assert run(second, "--skip-existing") == EXIT_SOME_FAILED  # its own: reused
    status = {r["path"].split("/")[-1]: r["status"] for r in _rows(out / "per_image.csv")}
    assert status["img_00.png"] == "existing"


def _mismatched_masks(root: Path, list_file: Path) -> Path:
    """The tiny list with img_00's mask at half size, img_01's unreadable (0 bytes)."""
    data = root / "mismatch"
    shutil.copytree(list_file.parent, data)
    mask = cv2.imread(str(data / "mask_00.png"), 0)
    cv2.imwrite(str(data / "mask_00.png"), cv2.resize(mask, (44, 36), interpolation=0))
    (data / "mask_01.png").write_bytes(b"")
    return data / "test.txt"


@pytest.mark.parametrize("policy", ["image-level", "resize", "reject"])
def test_masks_of_another_size_follow_the_policy_fresh_reused_and_from_maps(
    tiny_data, tmp_path, policy
):
    """The release scores an image whose mask size differs from its map at the image
    level only (the default); ``resize`` scores the resized mask, ``reject`` fails the
    row. Each mask is named, as a warning in summary.json or as the failure, and the
    same rows come from the maps scored again (``--pred-dir``, as the benchmark scores
    them) and from maps reused (``--skip-existing``); an unreadable mask is named, not
    the image, there too."""
    _, list_file, ckpt = tiny_data
    test = _mismatched_masks(tmp_path, list_file)
    policy_args = ["--mask-size-policy", policy]
    argv = ["--model_path", str(ckpt), "--test_file", str(test), "--save_dir", str(tmp_path)]
    argv += ["--resize", "64", "--workers", "0", *policy_args]
    assert infer_mvss_calmetrics.main(argv) == EXIT_SOME_FAILED
    out = tmp_path / "test" / "tiny"
    fresh = {Path(r["path"]).name: r for r in _rows(out / "per_image.csv")}
    summary = json.loads((out / "summary.json").read_text())
    small = str(test.parent / "mask_00.png")
    empty = f"mask {test.parent / 'mask_01.png'}: empty file (0 bytes)"
    assert fresh["img_01.png"]["status"] == "failed" and fresh["img_01.png"]["reason"] == empty
    row = fresh["img_00.png"]
    mismatch = f"{small}: mask is 44×36 but its image is 88×72"
    if policy == "image-level":
        assert row["status"] == "ok (mask size differs: image level only)" and row["score"]
        assert row["pixel_f1"] == "" and summary["num_tampered_scored"] == 1
        assert summary["warnings"] == [
            f"{mismatch}: its label counts, its pixels do not (the release's rule)"
        ]
    elif policy == "resize":
        assert row["status"] == "ok" and row["pixel_f1"] != ""
        assert summary["num_tampered_scored"] == 2
        assert summary["warnings"] == [
            f"{small}: mask 44×36 resized (nearest) to the image's 88×72"
        ]
    else:
        assert row["status"] == "failed" and row["reason"] == mismatch
        assert summary["warnings"] == []

    def same_rows(rows: dict, status: Callable[[str], str]) -> None:
        assert rows.keys() == fresh.keys()
        for name, before in fresh.items():
            after = rows[name]
            assert after["status"] == status(before["status"]), name
            assert {k: v for k, v in after.items() if k not in ("status", "pred")} == {
                k: v for k, v in before.items() if k not in ("status", "pred")
            }, name

    pred_dir = ["--test_file", str(test), "--save_dir", str(tmp_path), *policy_args]
    infer_mvss_calmetrics.main([*pred_dir, "--pred-dir", str(out / "pred")])
    scored = tmp_path / "test" / "eval_pred"
    again = json.loads((scored / "summary.json").read_text())
    assert again["warnings"] == summary["warnings"]
    for key in ("pixel_f1", "image_auc", "num_tampered_scored", "num_images", "num_failed"):
        assert again[key] == summary[key], key
    no_map = {"img_01.png", "corrupt.jpg"} | ({"img_00.png"} if policy == "reject" else set())
    from_maps = {Path(r["path"]).name: r for r in _rows(scored / "per_image.csv")}
    for name in no_map:  # failed in the run: no map to score
        assert from_maps[name]["status"] == "failed"
        from_maps[name] = fresh[name]
    same_rows(from_maps, lambda status: status)

    # reused one image at a time (each map read back, its truth read at the map's size)
    infer_mvss_calmetrics.main([*argv, "--skip-existing", "--batch-size", "1"])
    reused = {Path(r["path"]).name: r for r in _rows(out / "per_image.csv")}
    assert json.loads((out / "summary.json").read_text())["warnings"] == summary["warnings"]
    same_rows(reused, lambda status: status.replace("ok", "existing", 1))
    # a mask made unreadable after its map was written: named on reuse too
    (test.parent / "mask_02.png").write_bytes(b"")
    infer_mvss_calmetrics.main([*argv, "--skip-existing", "--batch-size", "1"])
    row = {Path(r["path"]).name: r for r in _rows(out / "per_image.csv")}["img_02.png"]
    assert row["status"] == "failed"
    assert row["reason"] == f"mask {test.parent / 'mask_02.png'}: empty file (0 bytes)"


def test_written_maps_equal_the_releases_bit_for_bit(tiny_data, tmp_path):
    """The release floors sigmoid·255 to uint8 at the network's size and resizes that
    uint8 map back; resizing the float map first differs by a level here and there."""
    root, list_file, ckpt = tiny_data
    code = infer_mvss_calmetrics.main(
        [
            "--model_path",
            str(ckpt),
            "--test_file",
            str(list_file),
            "--save_dir",
            str(tmp_path),
            "--resize",
            "96",
            "--workers",
            "0",
            "--batch-size",  # the release's: one image per forward (kernels may round
            "1",  # differently for another batch size, on some CPUs)
        ]
    )
    assert code == EXIT_SOME_FAILED
    net = get_mvss(backbone="resnet18")
    load_weights(net, ckpt)
    net.eval()
    float_first_differs = False
    for i in range(5):
        image = cv2.imread(str(root / "data" / f"img_{i:02d}.png"))
        net_in = cv2.resize(image, (96, 96), interpolation=cv2.INTER_LINEAR)
        with torch.inference_mode():
            prob = torch.sigmoid(net(normalize_bgr(net_in)[None])[1])[0, 0]
        uint8_at_net = prob.mul(255).byte().numpy()  # ToPILImage's conversion
        release = cv2.resize(uint8_at_net, (88, 72))  # cv2's default: bilinear
        written = cv2.imread(str(tmp_path / "test" / "tiny" / "pred" / f"img_{i:02d}.png"), 0)
        np.testing.assert_array_equal(written, release)
        float_first = np.floor(cv2.resize(prob.numpy(), (88, 72)) * 255).astype(np.uint8)
        float_first_differs |= not np.array_equal(float_first, release)
    assert float_first_differs  # the test can tell the two orders apart


def test_infer_all_good_exit_zero_and_tiled(tiny_data, tmp_path):
    _, _, ckpt = tiny_data
    good = make_tiny_dataset(tmp_path / "good", corrupt=False)
    code = infer_mvss_calmetrics.main(
        [
            "--model-path",
            str(ckpt),
            "--test-file",
            str(good),
            "--save-dir",
            str(tmp_path / "o"),
            "--resize",
            "none",
            "--tile",
            "64",
            "--tile-stride",
            "48",
            "--workers",
            "0",
        ]
    )
    assert code == 0
    pred = cv2.imread(str(tmp_path / "o" / "test" / "tiny" / "pred" / "img_00.png"), 0)
    assert pred.shape == (72, 88)


def test_three_class_script(tmp_path):
    data = make_tiny_dataset(tmp_path / "d", three_class=True)
    ckpt = make_tiny_checkpoint(tmp_path / "tiny3.pt", nclass=3)
    code = run_three_class_inference(ckpt, data, tmp_path / "o")
    assert code == EXIT_SOME_FAILED
    out = tmp_path / "o" / "test" / "tiny3"
    index = cv2.imread(str(out / "pred" / "img_00.png"), cv2.IMREAD_UNCHANGED)
    assert index.shape == (72, 88) and index.max() <= 2
    colour = cv2.imread(str(out / "color" / "img_00.png"))
    assert colour.shape == (72, 88, 3)
    for sub in ("prob_tampered", "prob_desensitised", "merged", "merged_bin"):
        assert (out / sub / "img_00.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    for key in ("f1_tampered", "f1_desensitised", "miou", "pixel_accuracy", "merged_pixel_f1"):
        assert key in summary
    assert summary["num_images"] == 5 and summary["num_failed"] == 1
    assert summary["empty_f1_rule"] == "seed"  # the script's default: the seed's tables
    # the per-image CSV, the seed's 3kinds_metric.csv and the summary agree
    rows = [r for r in _rows(out / "per_image.csv") if r["status"] == "ok"]
    with open(out / "3kinds_metric.csv") as fh:
        seed = list(csv.reader(fh))
    assert seed[0][:4] == ["img", "gt", "f1-1", "iou-1"] and seed[-1][0] == "END"
    assert seed[-2][:2] == ["Average", "5"] and len(seed) == 5 + 3
    columns = seed[0]
    for key, column in (("f1_tampered", "f1-1"), ("miou", "miou"), ("auc_desensitised", "auc-2")):
        per_image = [float(r[key]) for r in rows]
        assert summary[key] == pytest.approx(np.mean(per_image))
        assert float(seed[-2][columns.index(column)]) == pytest.approx(summary[key])
        assert [float(x[columns.index(column)]) for x in seed[1:-2]] == pytest.approx(per_image)


@pytest.mark.parametrize("crop", ["64", "none"])
def test_classification_script(tmp_path, crop):
    data = make_tiny_dataset(tmp_path / "d")
    ckpt = make_tiny_checkpoint(tmp_path / "cls.pt", cls_head="max")
    code = infer_mvss_cls.main(
        [
            "--model_path",
            str(ckpt),
            "--test_file",
            str(data),
            "--save_dir",
            str(tmp_path / "o"),
            "--crop",
            crop,
            "--crop-stride",
            "32",
            "--resize",
            "64",
        ]
    )
    assert code == EXIT_SOME_FAILED
    rows = _rows(tmp_path / "o" / "test" / "cls" / "per_image.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 5
    if crop == "64":
        assert all(int(r["crops"]) == 4 for r in ok)  # 72×88 at 64/24 → 2 × 2 crops
    summary = json.loads((tmp_path / "o" / "test" / "cls" / "summary.json").read_text())
    assert summary["num_images"] == 5 and len(summary["confusion_matrix"]) == 2


def test_a_classifier_runs_on_the_crops_it_trained_on_by_default(tmp_path, capsys):
    """Without --crop, a checkpoint trained on 64-px crops (its threshold chosen on them)
    is scored on 64-px crops side by side, in the script, the benchmark and the web app;
    a checkpoint that says nothing keeps the seed's 512. It ran 512-px crops whatever
    the checkpoint trained on."""
    import benchmark
    import serve

    data = make_tiny_dataset(tmp_path / "d", corrupt=False)  # 72×88 images
    ckpt = make_tiny_checkpoint(tmp_path / "cls.pt", cls_head="max")
    state = torch.load(ckpt, weights_only=True)
    state["config"].update(crop=True, size=64)
    trained = tmp_path / "trained64.pt"
    torch.save(state, trained)
    for path, crops in ((trained, 4), (ckpt, 1)):  # 72×88: 2 × 2 crops of 64, one of 512
        out = tmp_path / f"o_{path.stem}"
        argv = ["--model_path", str(path), "--test_file", str(data), "--save_dir", str(out)]
        assert infer_mvss_cls.main([*argv, "--workers", "0"]) == 0
        rows = _rows(out / "test" / path.stem / "per_image.csv")
        assert [int(r["crops"]) for r in rows] == [crops] * 5, path.stem
        bench = tmp_path / f"b_{path.stem}"
        argv = ["--model_path", str(path), "--sets", f"t={data}", "--save_dir", str(bench)]
        assert benchmark.main([*argv, "--workers", "0"]) == 0
        scores = json.loads((bench / path.stem / "t" / "none" / "scores.json").read_text())
        assert [r["crops"] for _, r in scores] == [crops] * 5, path.stem
    assert "crops: 64 px at stride 64 (the checkpoint's training crop)" in capsys.readouterr().out
    service, info = serve.build(serve.parse_args(["--model_path", str(trained), "--no-fast"]))
    assert info.crop == 64
    image = cv2.imread(str(data.parent / "img_00.png"))
    model, opts = service.analyser.model, service.analyser.opts
    from common.inference.crops import score_crops

    want = score_crops(model, image, opts, 64, 64, "negative")
    assert want[1] == 4 and service.analyser(image, None).score == pytest.approx(want[0])


def test_a_classifier_trained_on_resized_images_is_scored_on_them(tmp_path, capsys):
    """A checkpoint trained with ``crop: false`` (whole images resized to its ``size``,
    validation at ``val_size`` or ``size``) is scored on whole images at that size, in
    the script and the benchmark, unless --crop or --resize says otherwise; it was scored
    on the seed's 512-px crops."""
    import benchmark

    data = make_tiny_dataset(tmp_path / "d", corrupt=False)
    state = torch.load(make_tiny_checkpoint(tmp_path / "cls.pt", cls_head="max"), weights_only=True)
    state["config"].update(crop=False, size=96, val_size=80)
    resized = tmp_path / "resized.pt"
    torch.save(state, resized)
    from common.inference.settings import describe_checkpoint

    assert describe_checkpoint(resized).resized == 80 and describe_checkpoint(resized).crop is None
    base = ["--model_path", str(resized), "--test_file", str(data), "--workers", "0"]
    assert infer_mvss_cls.main([*base, "--save_dir", str(tmp_path / "a")]) == 0
    header = capsys.readouterr().out
    assert (
        "whole images, resized to 80 (the checkpoint trained on whole images resized to 80)"
        in header
    )
    rows = _rows(tmp_path / "a" / "test" / "resized" / "per_image.csv")
    assert [int(r["crops"]) for r in rows] == [1] * 5
    assert infer_mvss_cls.main([*base, "--save_dir", str(tmp_path / "b"), "--resize", "64"]) == 0
    assert (
        "whole images, resized to 64 (the checkpoint trained on whole images)"
        in capsys.readouterr().out
    )
    assert infer_mvss_cls.main([*base, "--save_dir", str(tmp_path / "c"), "--crop", "64"]) == 0
    assert "crops: 64 px at stride 64 (given)" in capsys.readouterr().out
    # full resolution asked for: crops of it (whole images at full size have no bound)
    assert infer_mvss_cls.main([*base, "--save_dir", str(tmp_path / "n"), "--resize", "none"]) == 0
    assert "crops: 512 px at stride 512 (the seed's, at full resolution" in capsys.readouterr().out
    bench = tmp_path / "bench"
    argv = ["--model_path", str(resized), "--sets", f"t={data}", "--save_dir", str(bench)]
    assert benchmark.main([*argv, "--workers", "0"]) == 0
    scores = json.loads((bench / "resized" / "t" / "none" / "scores.json").read_text())
    assert [r["crops"] for _, r in scores] == [1] * 5
    # the same images in the same order: the same whole-image scores (the CSV rounds to 6)
    assert [r["score"] for _, r in scores] == pytest.approx(
        [float(r["score"]) for r in rows], abs=1e-5
    )
    import serve  # the web app, at full resolution or 512: the whole image at 80, as the script

    args = serve.parse_args(["--model_path", str(resized), "--no-fast", "--amp", "off"])
    service, info = serve.build(args)
    assert info.resized == 80 and info.as_json()["resized"] == 80
    image = cv2.imread(rows[0]["path"])
    for side in (None, 512, 80):
        got = service.analyser(image, side).score
        assert got == pytest.approx(float(rows[0]["score"]), abs=1e-5), side


@pytest.mark.parametrize("crop", ["64", "none"])
def test_classification_runs_the_shared_inference_path(tmp_path, crop):
    """The classifier goes through the predictor's decoding workers and ``run_model``:
    the fast path and batching change no score beyond fp32 rounding."""
    data = make_tiny_dataset(tmp_path / "d")
    ckpt = make_tiny_checkpoint(tmp_path / "cls.pt", cls_head="max")
    base = ["--model_path", str(ckpt), "--test_file", str(data), "--crop", crop]
    base += ["--crop-stride", "32", "--resize", "64"]
    scores = {}
    for name, extra in {
        "plain": ["--workers", "0", "--batch-size", "1"],
        "fast": ["--workers", "2", "--batch-size", "3", "--fast"],
    }.items():
        out = tmp_path / name
        assert infer_mvss_cls.main([*base, "--save_dir", str(out), *extra]) == EXIT_SOME_FAILED
        rows = _rows(out / "test" / "cls" / "per_image.csv")
        scores[name] = {r["path"]: float(r["score"]) for r in rows if r["status"] == "ok"}
    assert scores["plain"].keys() == scores["fast"].keys() and len(scores["plain"]) == 5
    for path, value in scores["plain"].items():
        assert scores["fast"][path] == pytest.approx(value, abs=1e-4)


def test_model_outputs_are_named():
    from models import MVSSClsOutput, get_mvss_cls

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_mvss(backbone="resnet18").eval()
        cls_net = get_mvss_cls(backbone="resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, cls_out = net(x), cls_net(x)
    assert isinstance(out, MVSSOutput) and isinstance(cls_out, MVSSClsOutput)
    edge, seg = out  # the release's unpacking still works
    assert edge is out.edge and seg is out.seg and seg.shape == (1, 1, 64, 64)
    assert cls_out.cls.shape == (1,) and cls_out.seg.shape == seg.shape


def test_pred_dir_finds_maps_by_the_writers_and_the_releases_names(tmp_path):
    """Colliding stems carry our writer's hash suffix; the release names a map by the
    file name up to its first dot. Each map is the image's own mask, so pixel-F1 = 1 only
    if every image is matched to its own map."""
    from common.core.reports import unique_names
    from common.data.sources import read_list_file
    from common.evaluation.batch_run import EvalSettings
    from common.evaluation.localization import run_pred_dir_evaluation

    rows = []
    images = ["one/a.png", "two/a.png", "b.v2.png"]
    for i, rel in enumerate(images):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((16, 16, 3), 80, np.uint8))
        mask = np.zeros((16, 16), np.uint8)
        mask[i * 4 : i * 4 + 4, :] = 255  # a different region for each image
        cv2.imwrite(str(tmp_path / f"m{i}.png"), mask)
        rows.append(f"{rel} m{i}.png 1")
    (tmp_path / "l.txt").write_text("\n".join(rows) + "\n")
    records, _ = read_list_file(tmp_path / "l.txt")
    names = unique_names([r.image for r in records])
    assert names[0] != names[1] and names[0].startswith("a_")
    maps = tmp_path / "maps"
    maps.mkdir()
    for i, name in enumerate([names[0], names[1], "b"]):  # "b": the release's name
        cv2.imwrite(str(maps / f"{name}.png"), cv2.imread(str(tmp_path / f"m{i}.png"), 0))
    out = tmp_path / "eval"
    assert run_pred_dir_evaluation(records, [], maps, out, EvalSettings()) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pixel_f1"] == 1.0 and summary["num_images"] == 3


def test_int8_path_calibrates_once_then_reads_its_cache(tiny_data, tmp_path, caplog):
    """``--int8`` (tiled here, so calibration runs at the tile size) writes its
    calibration file, prints its cost, reuses the file while the checkpoint and images
    match, and gives maps close to the fp32 run's."""
    _, _, ckpt = tiny_data
    good = make_tiny_dataset(tmp_path / "good", corrupt=False)
    cache = tmp_path / "calib.pt"
    base = ["--model-path", str(ckpt), "--test-file", str(good), "--workers", "0"]
    base += ["--resize", "none", "--tile", "64", "--tile-stride", "48"]
    int8 = ["--int8", "--int8-images", "2", "--int8-cache", str(cache), "--int8-min-gain", "0"]
    caplog.set_level("INFO", logger="mvss")
    assert infer_mvss_calmetrics.main([*base, "--save-dir", str(tmp_path / "a"), *int8]) == 0
    assert cache.is_file() and "calibrating on 2 image(s)" in caplog.text
    assert "int8 is opt-in and approximate" in caplog.text
    state = torch.load(cache, weights_only=True)
    assert state["key"]["size"] == 64 and len(state["qparams"]) > 10
    caplog.clear()
    assert infer_mvss_calmetrics.main([*base, "--save-dir", str(tmp_path / "b"), *int8]) == 0
    assert "calibration read from" in caplog.text and "calibrating" not in caplog.text
    assert infer_mvss_calmetrics.main([*base, "--save-dir", str(tmp_path / "f")]) == 0
    pred = "test/tiny/pred/img_00.png"
    a, b = (cv2.imread(str(tmp_path / d / pred), 0) for d in ("a", "b"))
    ref = cv2.imread(str(tmp_path / "f" / pred), 0)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - ref).mean() <= 8  # random weights: a loose bound
    assert state["cost"]["speed_gains"][cpu_kernel_signature()] > 0  # measured, kept per CPU


def test_int8_runs_the_fast_path_where_it_does_not_pay(tiny_data, tmp_path, caplog):
    """Where int8 measured under --int8-min-gain times the fast path's speed on this CPU,
    one line says so and the fast path's maps are written."""
    _, _, ckpt = tiny_data
    good = make_tiny_dataset(tmp_path / "good", corrupt=False)
    base = ["--model-path", str(ckpt), "--test-file", str(good), "--workers", "0"]
    base += ["--resize", "64", "--batch-size", "1"]
    int8 = ["--int8", "--int8-images", "2", "--int8-cache", str(tmp_path / "c.pt")]
    caplog.set_level("INFO", logger="mvss")
    assert infer_mvss_calmetrics.main([*base, "--save-dir", str(tmp_path / "a"), *int8]) == 0
    caplog.clear()
    slow = ["--int8-min-gain", "1000"]  # no CPU reaches it: int8 "does not pay"
    assert infer_mvss_calmetrics.main([*base, "--save-dir", str(tmp_path / "b"), *int8, *slow]) == 0
    assert "do not pay on this CPU" in caplog.text and "opt-in and approximate" not in caplog.text
    fast = ["--fast", "--amp", "bf16", "--channels-last", "--winograd"]
    assert infer_mvss_calmetrics.main([*base, "--save-dir", str(tmp_path / "f"), *fast]) == 0
    pred = "test/tiny/pred/img_00.png"
    b, f = (cv2.imread(str(tmp_path / d / pred), 0) for d in ("b", "f"))
    assert np.array_equal(b, f)


@pytest.mark.parametrize(
    ("flag", "tile"), [([], None), (["--winograd"], 2), (["--winograd", "4"], 4)]
)
def test_winograd_option_picks_the_tile(tmp_path, flag, tile):
    """``--winograd`` alone is F(2×2, 3×3); ``--winograd 4`` is F(4×4, 3×3)."""
    import argparse

    from common.accel.winograd import WinogradConv2d
    from common.inference.arguments import add_model_args, add_run_args, load_model, model_spec

    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt")
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    add_run_args(parser)
    args = parser.parse_args(["--model_path", str(ckpt), "--fast", "--amp", "bf16", *flag])
    assert args.winograd == tile
    net = load_model(args, model_spec(args), torch.device("cpu"))
    tiles = {m.tile for m in net.modules() if isinstance(m, WinogradConv2d)}
    assert tiles == ({tile} if tile else set())


@pytest.mark.parametrize(("flag", "tile"), [([], 2), (["--winograd", "4"], 4)])
def test_int8_path_keeps_the_winograd_tile_asked_for(tmp_path, flag, tile):
    """``--int8 --winograd 4`` is the int8 path with the F(4×4) head (it was silently
    F(2×2)), compared against, and replaced where int8 does not pay by, the F(4×4) fast
    path; the tile is part of the calibration cache's key (cost and speed depend on it)."""
    import argparse

    from common.accel.int8 import Int8ResNet
    from common.accel.winograd import WinogradConv2d
    from common.inference.arguments import add_model_args, add_run_args, load_model, model_spec

    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt")
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    add_run_args(parser)
    cache = tmp_path / "calib.pt"
    argv = ["--model_path", str(ckpt), "--int8", "--int8-images", "2"]
    argv += ["--tile", "64", "--tile-stride", "48"]
    argv += ["--int8-cache", str(cache), *flag]
    for min_gain, int8_runs in (("0", True), ("1000", False)):
        args = parser.parse_args([*argv, "--int8-min-gain", min_gain])
        net = load_model(args, model_spec(args), torch.device("cpu"))
        assert any(isinstance(m, Int8ResNet) for m in net.modules()) == int8_runs
        assert {m.tile for m in net.modules() if isinstance(m, WinogradConv2d)} == {tile}
    assert torch.load(cache, weights_only=True)["key"]["winograd_tile"] == tile


@pytest.mark.parametrize("script", ["three-class", "classifier"])
@pytest.mark.parametrize("path", [["--fast", "--amp", "bf16", "--winograd"], ["--int8"]])
def test_three_class_and_classifier_scripts_take_the_fast_paths(tmp_path, caplog, script, path):
    """The 3-class and classifier scripts accept the fast and int8 options and finish."""
    import infer_3labels_merge_calmetrics

    data = make_tiny_dataset(tmp_path / "data", corrupt=False)
    if script == "three-class":
        ckpt = make_tiny_checkpoint(tmp_path / "tiny3.pt", nclass=3)
        main = infer_3labels_merge_calmetrics.main
        size = ["--tile", "64", "--tile-stride", "48"]
    else:
        ckpt = make_tiny_checkpoint(tmp_path / "cls.pt", cls_head="max")
        main = infer_mvss_cls.main
        size = ["--resize", "64"]
    if path == ["--int8"]:
        path = [*path, "--int8-images", "2", "--int8-min-gain", "0"]  # int8 whatever its speed
    caplog.set_level("INFO", logger="mvss")
    argv = ["--model_path", str(ckpt), "--test_file", str(data), "--workers", "0"]
    argv += ["--save_dir", str(tmp_path / "out"), *size, *path]
    assert main(argv) == 0
    assert ("int8 is opt-in and approximate" in caplog.text) == ("--int8" in path)


@pytest.mark.parametrize("resize", ["96", "none"])
def test_the_python_api_gives_what_the_script_writes(tiny_data, resize):
    """``common.inference.predict`` and infer_mvss_calmetrics.py: the same 8-bit map and
    the same image score, to the last bit (both at batch 1, on one thread)."""
    from common.inference import load_model
    from common.inference import predict as api_predict

    root, list_file, ckpt = tiny_data
    save = root / f"api_{resize}"
    argv = ["--model_path", str(ckpt), "--test_file", str(list_file), "--save_dir", str(save)]
    argv += ["--resize", resize, "--workers", "0", "--batch-size", "1"]
    argv += ["--tile", "64", "--tile-stride", "48"]
    with threads(1):
        infer_mvss_calmetrics.main(argv)
        model = load_model(ckpt, torch.device("cpu"))
        out = save / "test" / "tiny"
        rows = {Path(r["path"]).name: r for r in _rows(out / "per_image.csv") if r["score"]}
        size = None if resize == "none" else int(resize)
        opts = RunOptions(tile=64, tile_stride=48, tile_batch=1)
        for name, row in rows.items():
            image = cv2.imread(str(list_file.parent / row["path"]), cv2.IMREAD_COLOR)
            if image is None:
                image = cv2.imread(row["path"], cv2.IMREAD_COLOR)
            levels, score = api_predict(model, image, resize=size, opts=opts)
            written = cv2.imread(str(out / "pred" / f"{Path(name).stem}.png"), 0)
            assert np.array_equal(levels, written), name
            assert f"{score:.6f}" == row["score"], name  # the CSV keeps 6 decimals
    assert len(rows) == 5


def test_int8_runs_on_the_cpu_even_where_auto_finds_a_gpu(monkeypatch):
    from common.inference.settings import ModelSpec, run_options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    spec = ModelSpec(int8=True).resolved("auto")
    assert run_options(spec, "auto").device.type == "cpu"
    assert (spec.amp, spec.fast, spec.channels_last) == ("bf16", True, True)


def test_the_python_api_takes_an_image_as_the_scripts_take_its_file(tiny_model, tmp_path):
    """A path, a grey, BGRA, 16-bit or float array gives what the uint8 BGR image gives
    (converted as files of those kinds are); what cannot be an image is refused."""
    from common.inference import predict as api_predict

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 52), dtype=np.uint8)
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(tmp_path / "x.png"), bgr)
    same = {
        "path": str(tmp_path / "x.png"),
        "grey": grey,
        "grey H×W×1": grey[:, :, None],
        "BGRA": np.dstack([bgr, np.full_like(grey, 7)]),
        "uint16": bgr.astype(np.uint16) * 257,
        "float 0-1": bgr.astype(np.float32) / 255,
    }
    with threads(1):
        want = api_predict(tiny_model, bgr, resize=64)
        for name, image in same.items():
            levels, score = api_predict(tiny_model, image, resize=64)
            assert np.array_equal(levels, want[0]) and score == want[1], name
        refused = {
            "an image of bool values": grey > 127,
            "channels last; got (3, 40, 52)": bgr.transpose(2, 0, 1),
            "without pixels": bgr[:0],
            "must be finite": np.full((8, 8, 3), np.nan, np.float32),
        }
        for message, image in refused.items():
            with pytest.raises(ValueError, match=re.escape(message)):
                api_predict(tiny_model, image, resize=64)
        with pytest.raises(TypeError, match="got list"):
            api_predict(tiny_model, bgr.tolist(), resize=64)
        with pytest.raises(TypeError, match="resize must be an int"):
            api_predict(tiny_model, bgr, resize="512")


@pytest.mark.parametrize(("amp", "full_fp32"), [("off", True), ("fp16", False), ("bf16", False)])
def test_fp32_on_a_gpu_turns_tf32_off(tmp_path, monkeypatch, capsys, amp, full_fp32):
    """``--amp off`` on a GPU computes in full fp32 (loading the model turns TF32 off, for
    the scripts and the Python API alike; the scripts say so): PyTorch's default lets
    cuDNN round convolution inputs to TF32, which moved the maps by up to 20/255 on an
    H200. The mixed-precision paths keep the defaults; on the CPU nothing changes."""
    import argparse

    from common.evaluation.arguments import maps_stamp
    from common.inference.arguments import (
        add_model_args,
        add_run_args,
        load_model,
        model_spec,
        run_options,
    )

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    flags = (torch.backends.cudnn, torch.backends.cuda.matmul)
    before = [flag.allow_tf32 for flag in flags]
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt")
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    add_run_args(parser)
    try:
        for flag in flags:
            flag.allow_tf32 = True
        for device, switched in (("cpu", False), ("cuda", full_fp32)):
            argv = ["--model_path", str(ckpt), "--device", device, "--amp", amp]
            args = parser.parse_args(argv)
            if device == "cpu" and amp == "fp16":
                continue  # refused on the CPU (tested elsewhere)
            spec = model_spec(args)
            assert run_options(args, spec).device.type == device
            assert ("TF32 off" in capsys.readouterr().out) is switched
            with monkeypatch.context() as no_gpu_here:
                no_gpu_here.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
                load_model(args, spec, torch.device(device))  # the Python API's path too
            assert [flag.allow_tf32 for flag in flags] == [not switched] * 2
            # maps made with TF32 on (before) are not reused as these
            args.resize, args.tile, args.tile_stride = 512, 512, 384
            assert ("gpu_fp32" in maps_stamp(args, spec)) is switched
    finally:
        for flag, value in zip(flags, before, strict=True):
            flag.allow_tf32 = value
