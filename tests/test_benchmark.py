"""benchmark.py: perturbations that do what they say, tables and plots, threshold transfer,
resume, and a 2-process run giving exactly the single-process numbers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import make_tiny_checkpoint, make_tiny_dataset, threads

import benchmark
from common.benchmark.degradations import Perturbation, parse_sweep, preset
from common.data.sources import load_source
from common.inference.batched import iter_predictions
from common.inference.single_image import RunOptions

ROOT = Path(__file__).resolve().parents[1]


def _textured(seed: int = 0, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    _, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


# ----------------------------------------------------------------------------- perturbations


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_jpeg_is_that_quality(quality):
    image = _textured()
    out = Perturbation("jpeg", quality)(image, "a.png")
    assert np.array_equal(out, _jpeg(image, quality))
    assert not np.array_equal(out, _jpeg(image, quality - 5))


def test_benco_jpeg_draws_q_minus_one_or_q_per_image():
    image = _textured()
    p = Perturbation("jpeg_benco", 70)
    seen = set()
    for i in range(12):
        out = p(image, f"img_{i}.png")
        match = [q for q in (69, 70) if np.array_equal(out, _jpeg(image, q))]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {69, 70}


@pytest.mark.parametrize("kernel", [3, 7, 23])
def test_blur_kernel_and_sigma(kernel):
    image = _textured()
    out = Perturbation("blur", kernel)(image, "a.png")
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8  # OpenCV's (and albumentations') rule
    k = cv2.getGaussianKernel(kernel, sigma)
    want = cv2.sepFilter2D(image, -1, k, k, borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1
    assert np.abs(out.astype(int) - image.astype(int)).mean() > 1


@pytest.mark.parametrize(("kind", "level", "std"), [("noise", 8, 8.0), ("noise_var", 25, 5.0)])
def test_noise_standard_deviation(kind, level, std):
    flat = np.full((256, 256, 3), 128, np.uint8)
    out = Perturbation(kind, level)(flat, "a.png").astype(np.float64) - 128
    assert out.std() == pytest.approx(std, rel=0.03)
    assert abs(out.mean()) < 0.1


def test_perturbations_are_deterministic_per_image():
    image = _textured()
    a = Perturbation("noise", 5, seed=1)
    assert np.array_equal(a(image, "x.png"), Perturbation("noise", 5, seed=1)(image, "x.png"))
    # keyed on the file name: a data set moved elsewhere gets the same noise
    assert np.array_equal(a(image, "/data/set/x.png"), a(image, "/elsewhere/x.png"))
    assert not np.array_equal(a(image, "x.png"), a(image, "y.png"))
    assert not np.array_equal(a(image, "x.png"), Perturbation("noise", 5, seed=2)(image, "x.png"))


def test_resize_round_trip_maps_come_back_at_the_original_size(tmp_path, tiny_model):
    list_file = make_tiny_dataset(tmp_path / "d", corrupt=False)  # 72×88 images
    records, _ = load_source(str(list_file))
    p = Perturbation("resize", 0.5)
    assert p(_textured(size=(72, 88)), "a").shape[:2] == (36, 44)
    for resize in (64, None):
        opts = RunOptions(tile=64, tile_stride=48)
        preds = list(iter_predictions(tiny_model, records, opts, resize, workers=0, perturb=p))
        assert all(pr.probs.shape[-2:] == (72, 88) for pr in preds)
        assert all(pr.mask is None or pr.mask.shape == (72, 88) for pr in preds)


@pytest.mark.parametrize(
    ("length", "batch", "world"), [(6, 2, 2), (3, 4, 2), (10, 3, 3), (0, 4, 2)]
)
def test_shards_are_the_single_process_batches(monkeypatch, length, batch, world):
    from common.core import distributed as dist

    single = [list(range(s, min(s + batch, length))) for s in range(0, length, batch)]
    shards = []
    for r in range(world):
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        monkeypatch.setattr(dist, "world_size", lambda: world)
        shards.append(dist.whole_batch_shard(length, batch))
    assert sorted(i for shard in shards for i in shard) == list(range(length))
    for shard in shards:  # chunked again as the predictor chunks a shard's records
        assert all(shard[k : k + batch] in single for k in range(0, len(shard), batch))


def test_a_resumed_batch_runs_whole(tmp_path, tiny_model, monkeypatch):
    """Maps are computed in the batches of an uninterrupted run, however many exist."""
    from common.inference import batched as predictor

    list_file = make_tiny_dataset(tmp_path / "d", n_tampered=3, n_authentic=2, corrupt=False)
    records, _ = load_source(str(list_file))
    sizes: list[int] = []
    real = predictor.forward_probs
    monkeypatch.setattr(
        predictor, "forward_probs", lambda m, x, o: sizes.append(len(x)) or real(m, x, o)
    )
    opts = RunOptions()
    skip = {0, 1, 3}.__contains__  # batch [0, 1] done; [2, 3] half done; [4] to do
    preds = list(
        iter_predictions(tiny_model, records, opts, 64, batch_size=2, workers=0, skip=skip)
    )
    assert sizes == [2, 1]
    assert [p.skipped for p in preds] == [True, True, False, False, False]


def test_sweeps_parse_and_presets():
    assert [p.name for p in parse_sweep("jpeg:50,70")] == ["jpeg_50", "jpeg_70"]
    with pytest.raises(ValueError, match="odd"):
        parse_sweep("blur:4")
    with pytest.raises(ValueError, match="unknown perturbation"):
        parse_sweep("sharpen:2")
    benco = preset("benco")
    assert [p.level for p in benco if p.kind == "blur"] == [3, 7, 11, 15, 19, 23]
    assert [p.level for p in benco if p.kind == "noise_var"] == [3, 7, 11, 15, 19, 23]
    assert [p.level for p in benco if p.kind == "jpeg_benco"] == [50, 60, 70, 80, 90, 100]


# ----------------------------------------------------------------------------- the script


@pytest.fixture(scope="module")
def bench_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    a = make_tiny_dataset(root / "a", n_tampered=3, n_authentic=2)  # + a corrupt row: 6 rows
    b = make_tiny_dataset(root / "b", n_tampered=2, n_authentic=1, corrupt=False)  # 3 rows
    return {
        "root": root,
        "a": a,
        "b": b,
        "ck": make_tiny_checkpoint(root / "tiny.pt"),
        "ckcls": make_tiny_checkpoint(root / "cls.pt", cls_head="max"),
        "ck3": make_tiny_checkpoint(root / "three.pt", nclass=3),
        "other": make_tiny_checkpoint(root / "other" / "tiny.pt", seed=5),
    }


def _argv(w, out: Path, *extra: str, ck: str = "ck") -> list[str]:
    return [
        "--model_path",
        str(w[ck]),
        "--sets",
        f"a={w['a']}",
        f"b={w['b']}",
        "--save_dir",
        str(out),
        "--resize",
        "64",
        "--workers",
        "0",
        "--perturb",
        "jpeg:70",
        "resize:0.5",
        *extra,
    ]


def _metrics(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("pred_dir", "failures")}


def test_benchmark_tables_plots_and_per_set_outputs(bench_world, tmp_path, capsys):
    out = tmp_path / "o"
    assert benchmark.main(_argv(bench_world, out, "--th-from", "b")) == 3  # a corrupt image
    root = out / "tiny"
    for name in ("benchmark.md", "benchmark.csv", "benchmark.json"):
        assert (root / name).is_file()
    for kind in ("jpeg", "resize"):
        assert (root / f"robustness_{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "| none |" in (root / f"robustness_{kind}.md").read_text()
    for level in ("none", "jpeg_70", "resize_0.5"):
        level_dir = root / "a" / level
        summary = json.loads((level_dir / "summary.json").read_text())
        assert summary["num_images"] == 5 and summary["num_failed"] == 1
        assert len(list((level_dir / "pred").glob("*.png"))) == 5
        assert (level_dir / "per_image.csv").read_text().count("failed") == 1
    table = json.loads((root / "benchmark.json").read_text())
    assert set(table["sets"]) == {"a", "b"}
    assert table["thresholds"]["chosen_on"] == "b"
    assert set(table["at_chosen_thresholds"]) == {"a"}  # never on the set it was chosen on
    md = (root / "benchmark.md").read_text()
    assert "pixel_f1 @ th from b" in md and "(chosen here)" in md
    # the console says both: the plain rows' thresholds and the chosen ones (it said
    # only "chosen on b"); every level's summary records the plain rows' thresholds
    printed = capsys.readouterr().out
    assert "thresholds: pixel 0.5, image 0.5" in printed
    assert "the '@ th from' rows: pixel" in printed and "chosen on b" in printed
    for level in ("none", "jpeg_70"):
        summary = json.loads((root / "a" / level / "summary.json").read_text())
        assert (summary["pixel_threshold"], summary["image_threshold"]) == (0.5, 0.5)
        assert summary["thresholds_source"]
    assert table["sets"]["a"]["thresholds_source"] == summary["thresholds_source"]
    # the rows at the chosen thresholds record them too, and where they came from
    chosen = json.loads((root / "a" / "none" / "th_from_b" / "summary.json").read_text())
    assert chosen["thresholds_source"].startswith("chosen on b (")
    assert chosen["pixel_threshold"] == pytest.approx(table["thresholds"]["pixel_threshold"])
    assert chosen["image_threshold"] == pytest.approx(table["thresholds"]["image_threshold"])


def test_benchmark_resumes_from_maps_on_disk(bench_world, tmp_path):
    out = tmp_path / "o"
    assert benchmark.main(_argv(bench_world, out)) == 3
    pred = out / "tiny" / "b" / "jpeg_70" / "pred"
    maps = sorted(pred.glob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in maps}
    first = json.loads((out / "tiny" / "benchmark.json").read_text())
    maps[0].unlink()
    assert benchmark.main(_argv(bench_world, out)) == 3
    assert maps[0].is_file()  # recomputed
    assert all(p.stat().st_mtime_ns == stamps[p] for p in maps[1:])  # reused
    second = json.loads((out / "tiny" / "benchmark.json").read_text())
    assert {s: _metrics(v) for s, v in first["sets"].items()} == {
        s: _metrics(v) for s, v in second["sets"].items()
    }
    # rerun without one of the kinds: its robustness tables are not left beside the new ones
    fewer = [a for a in _argv(bench_world, out) if a != "resize:0.5"]
    assert benchmark.main(fewer) == 3
    left = sorted(p.name for p in (out / "tiny").glob("robustness_*"))
    assert left == ["robustness_jpeg.csv", "robustness_jpeg.md", "robustness_jpeg.png"]


def test_benchmark_classifier(bench_world, tmp_path):
    out = tmp_path / "o"
    argv = _argv(bench_world, out, "--crop", "64", "--crop-stride", "64", ck="ckcls")
    assert benchmark.main(argv) == 3
    table = json.loads((out / "cls" / "benchmark.json").read_text())
    assert table["sets"]["a"]["num_images"] == 5 and "auc" in table["sets"]["b"]
    assert (out / "cls" / "robustness_jpeg.png").is_file()


def test_resume_refuses_maps_of_another_checkpoint_or_setting(bench_world, tmp_path, capsys):
    out = tmp_path / "o"
    assert benchmark.main(_argv(bench_world, out)) == 3
    first = json.loads((out / "tiny" / "benchmark.json").read_text())
    # another checkpoint with the same file name, then another resize: refused, one line
    swapped = _argv(bench_world, out)
    swapped[swapped.index("--sets") + 1 : swapped.index("--sets") + 3] = [
        f"a={bench_world['b']}",
        f"b={bench_world['a']}",
    ]  # the same set names on the other lists
    for argv in (
        _argv(bench_world, out, ck="other"),
        [*_argv(bench_world, out), "--resize", "96"],
        swapped,
    ):
        capsys.readouterr()
        assert benchmark.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "hold results made otherwise" in err[0], err
    assert "checkpoint_sha256 differ" in _one_error(benchmark, _argv(bench_world, out, ck="other"))
    # --overwrite recomputes them with the other checkpoint
    assert benchmark.main([*_argv(bench_world, out, ck="other"), "--overwrite"]) == 3
    again = json.loads((out / "tiny" / "benchmark.json").read_text())
    assert again["sets"]["a"]["pixel_auc"] != first["sets"]["a"]["pixel_auc"]


@pytest.mark.parametrize(
    "setting",
    [
        ["--int8"],
        ["--int8", "--int8-images", "4"],
        ["--int8", "--int8-calibration", "elsewhere.txt"],
        ["--int8", "--int8-min-gain", "0"],
        ["--fast"],
        ["--fast", "--winograd", "4"],
        ["--channels-last"],
        ["--batch-size", "8"],
        ["--amp", "bf16"],
        ["--resize", "96"],
    ],
)
def test_every_setting_that_changes_a_map_is_in_the_stamp(bench_world, tmp_path, setting):
    """A level's maps are reused only by a run that would make the same maps: an int8 run
    and a fast-path run (or another batch size) never reuse each other's."""
    base = benchmark.parse_args(_argv(bench_world, tmp_path))
    other = benchmark.parse_args([*_argv(bench_world, tmp_path), *setting])
    if "--int8" in setting[1:]:  # compared with a plain --int8 run
        base = benchmark.parse_args([*_argv(bench_world, tmp_path), "--int8"])
    assert benchmark._stamp(base, "localization") != benchmark._stamp(other, "localization")


def _one_error(module, argv) -> str:
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert module.main(argv) == 2
    return buf.getvalue().strip()


def test_benchmark_three_class_checkpoint_scores_the_merged_map(bench_world, tmp_path):
    out = tmp_path / "o"
    assert benchmark.main(_argv(bench_world, out, ck="ck3")) == 3
    table = json.loads((out / "three" / "benchmark.json").read_text())
    assert table["sets"]["b"]["num_images"] == 3 and "pixel_f1" in table["sets"]["b"]
    levels = cv2.imread(str(next((out / "three" / "b" / "none" / "pred").glob("*.png"))), 0)
    assert levels is not None and levels.dtype == np.uint8


def test_a_set_with_no_decodable_image_is_a_user_error(bench_world, tmp_path):
    bad = tmp_path / "bad.txt"
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    bad.write_text("x.jpg None 0\n")
    argv = _argv(bench_world, tmp_path / "o")
    argv[argv.index("--sets") + 2] = f"b={bad}"
    line = _one_error(benchmark, argv)
    assert "none of the 1 images can be read" in line and "--sets b=" in line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--th-from", "c"], "no set named 'c'"),
        (["--perturb", "blur:4"], "blur level 4 is not a Gaussian kernel size"),
        (["--sets", "nameless"], "expected NAME=LIST"),
    ],
)
def test_benchmark_user_errors(bench_world, tmp_path, capsys, extra, expected):
    out = tmp_path / "o"
    assert benchmark.main([*_argv(bench_world, out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not out.exists()


def test_benchmark_classifier_whole_image_without_a_size(bench_world, tmp_path, capsys):
    out = tmp_path / "o"
    argv = [*_argv(bench_world, out, ck="ckcls"), "--crop", "none", "--resize", "none"]
    assert benchmark.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resize is none" in err[0]
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_single_process_numbers(bench_world, tmp_path):
    """Whole batches are shared out, so each map comes from the batch (and the threads)
    one process would use: the numbers are equal exactly, on any CPU."""
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    extra = ("--th-from", "a", "--batch-size", "2")  # batches of 2: both ranks get some
    with threads(1):
        assert benchmark.main(_argv(bench_world, single, *extra)) == 3
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(ROOT / "benchmark.py")]
    cmd += _argv(bench_world, sharded, *extra, "--device", "cpu")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    # each rank exits with 3 (set a holds a corrupt image); torchrun reports it
    assert re.search(r"exitcode\s*:\s*3", proc.stderr), proc.stderr[-3000:]
    one = json.loads((single / "tiny" / "benchmark.json").read_text())
    two = json.loads((sharded / "tiny" / "benchmark.json").read_text())
    assert one["thresholds"] == two["thresholds"]
    for key in ("sets", "at_chosen_thresholds"):
        assert {s: _metrics(v) for s, v in one[key].items()} == {
            s: _metrics(v) for s, v in two[key].items()
        }
    for kind in ("jpeg", "resize"):
        a = (single / "tiny" / f"robustness_{kind}.csv").read_text()
        b = (sharded / "tiny" / f"robustness_{kind}.csv").read_text()
        assert a == b


def test_two_processes_give_the_single_process_classifier_numbers(bench_world, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    extra = ("--crop", "64", "--crop-stride", "64")  # batches of 4: set b on rank 0 alone
    with threads(1):
        assert benchmark.main(_argv(bench_world, single, *extra, ck="ckcls")) == 3
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(ROOT / "benchmark.py")]
    cmd += _argv(bench_world, sharded, *extra, "--device", "cpu", ck="ckcls")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert re.search(r"exitcode\s*:\s*3", proc.stderr), proc.stderr[-3000:]
    one = json.loads((single / "cls" / "benchmark.json").read_text())
    two = json.loads((sharded / "cls" / "benchmark.json").read_text())
    assert {s: _metrics(v) for s, v in one["sets"].items()} == {
        s: _metrics(v) for s, v in two["sets"].items()
    }


def test_a_three_class_checkpoint_tiles_as_the_three_class_script(bench_world, tmp_path):
    """From overlapping tiles, the benchmark writes the merged map the three-class script
    writes (tiles averaged, the seed's way; it weighted them toward their centres), so
    the two report the same numbers for the same settings."""
    import infer_3labels_merge_calmetrics

    data = make_tiny_dataset(
        tmp_path / "d", n_tampered=2, n_authentic=1, size=(100, 130), three_class=True
    )
    common = ["--model_path", str(bench_world["ck3"]), "--resize", "none", "--tile", "64"]
    common += ["--tile-stride", "32", "--th", "0.5", "--image-th", "0.5", "--batch-size", "1"]
    common += ["--workers", "0"]
    bench_out, script_out = tmp_path / "bench", tmp_path / "script"
    assert benchmark.main([*common, "--sets", f"d={data}", "--save_dir", str(bench_out)]) == 3
    argv = [*common, "--test_file", str(data), "--save_dir", str(script_out)]
    assert infer_3labels_merge_calmetrics.main(argv) == 3  # the corrupt row
    bench_maps = sorted((bench_out / "three" / "d" / "none" / "pred").glob("*.png"))
    merged = next(script_out.rglob("merged"))
    assert len(bench_maps) == 3  # the decodable images
    for path in bench_maps:
        ours, script = cv2.imread(str(path), 0), cv2.imread(str(merged / path.name), 0)
        assert ours is not None and np.array_equal(ours, script), path.name
    # a checkpoint that describes nothing (the seed's) tiles the same in the script
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(bench_world["ck3"], weights_only=True)["model"], bare)
    argv = [*common, "--test_file", str(data), "--save_dir", str(tmp_path / "bare")]
    argv[argv.index(str(bench_world["ck3"]))] = str(bare)
    assert infer_3labels_merge_calmetrics.main([*argv, "--backbone", "resnet18"]) == 3
    for path in bench_maps:
        seed_like = cv2.imread(str(next((tmp_path / "bare").rglob("merged")) / path.name), 0)
        assert np.array_equal(seed_like, cv2.imread(str(merged / path.name), 0)), path.name
    # where desensitised regions are not manipulated, the map scored is P(tampered): the
    # script's prob_tampered/ (it was 1 − P(pristine) whatever the policy); the maps
    # depend on the policy, so a level made under another one is not reused
    argv = [*common, "--sets", f"d={data}", "--save_dir", str(bench_out)]
    assert benchmark.main([*argv, "--desensitised", "negative"]) == 2
    assert benchmark.main([*argv, "--desensitised", "negative", "--overwrite"]) == 3
    tampered = next(script_out.rglob("prob_tampered"))
    for path in bench_maps:
        ours, script = cv2.imread(str(path), 0), cv2.imread(str(tampered / path.name), 0)
        assert np.array_equal(ours, script), path.name
