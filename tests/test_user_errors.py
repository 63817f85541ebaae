"""Every user error is one line on stderr and exit code 2, before any work starts.

Each case runs a script's ``main(argv)`` (what its command line runs) and checks the exit
code, that stderr holds exactly one ``error: …`` line and no traceback, and that nothing
was written. A few run as real subprocesses, to check the process exit code itself.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_checkpoint, make_tiny_dataset

import infer_3labels_merge_calmetrics
import infer_mvss_calmetrics
import infer_mvss_cls
import make_synthetic_data
import train_demo
import train_demo_cls
import train_demo_nclass3
from common.core.user_errors import UsageError, run_cli

ROOT = Path(__file__).resolve().parents[1]
INFER = {
    "binary": infer_mvss_calmetrics,
    "three": infer_3labels_merge_calmetrics,
    "cls": infer_mvss_cls,
}
TRAIN = {"binary": train_demo, "three": train_demo_nclass3, "cls": train_demo_cls}


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Inputs good and bad, made once: lists, checkpoints, and files that are not."""
    root = tmp_path_factory.mktemp("user_errors")
    w = {
        "list": make_tiny_dataset(root / "d", corrupt=False),
        "list3": make_tiny_dataset(root / "d3", three_class=True, corrupt=False),
        "ck": make_tiny_checkpoint(root / "binary.pt"),
        "ck3": make_tiny_checkpoint(root / "three.pt", nclass=3),
        "ckcls": make_tiny_checkpoint(root / "cls.pt", cls_head="max"),
    }
    (root / "text.pt").write_text("this is not a checkpoint\n" * 20)
    with open(root / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": _Exploit()}, fh)
    torch.save({"fc.weight": torch.zeros(2, 2)}, root / "other.pt")
    (root / "empty.txt").write_text("")
    (root / "missing_rows.txt").write_text("gone_1.png None 0\ngone_2.png gone_2_gt.png 1\n")
    (root / "bad1.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "bad2.png").write_bytes(b"")
    (root / "corrupt_rows.txt").write_text("bad1.jpg None 0\nbad2.png None 0\n")
    (root / "a_file").write_text("x")
    (root / "ok.png").write_bytes(Path(w["list"]).parent.joinpath("img_00.png").read_bytes())
    (root / "corrupt_masks.txt").write_text("ok.png bad2.png 1\nok.png bad1.jpg 1\n")
    (root / "blocked").mkdir()
    for kind, ck in (("binary", w["ck"]), ("three", w["ck3"]), ("cls", w["ckcls"])):
        lst = w["list3"] if kind == "three" else w["list"]
        (root / "blocked" / Path(lst).stem).mkdir(exist_ok=True)
        (root / "blocked" / Path(lst).stem / Path(ck).stem).write_text("a file in the way")
    (root / "maps_elsewhere").mkdir()
    (root / "maps_elsewhere" / "unrelated.png").write_bytes(b"x")
    (root / "config_dir").mkdir()
    w.update(
        root=root,
        text=root / "text.pt",
        evil=root / "evil.pt",
        other=root / "other.pt",
        empty=root / "empty.txt",
        missing_rows=root / "missing_rows.txt",
        corrupt_rows=root / "corrupt_rows.txt",
        corrupt_masks=root / "corrupt_masks.txt",
        a_file=root / "a_file",
    )
    return w


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _one_line_error(module, argv, capsys, root: Path) -> str:
    """Run ``module.main(argv)``; assert exit 2, one stderr line, no traceback, no new
    files under ``root``; return the line."""
    capsys.readouterr()
    before = _tree(root)
    code = module.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert _tree(root) == before, sorted(map(str, _tree(root) - before))
    return lines[0]


def _flatten(options: dict[str, object]) -> list[object]:
    return [part for pair in options.items() for part in pair]


# ----------------------------------------------------------------------------- inference


def _infer_argv(w, kind: str, **over: object) -> list[object]:
    ck = {"binary": w["ck"], "three": w["ck3"], "cls": w["ckcls"]}[kind]
    lst = w["list3"] if kind == "three" else w["list"]
    opts = {"--model_path": ck, "--test_file": lst, "--save_dir": w["root"] / "out"}
    opts.update({k: v for k, v in over.items() if v is not None})
    return ["--workers", "0", *_flatten(opts)]


INFERENCE_CASES = {
    "missing checkpoint": ({"--model_path": "nope.pt"}, "checkpoint not found"),
    "text checkpoint": ({"--model_path": "text"}, "not a PyTorch weight file"),
    "pickle with code": ({"--model_path": "evil"}, "refused: it holds code"),
    "another network": ({"--model_path": "other"}, "weights do not fit the model"),
    "save_dir under a file": ({"--save_dir": "a_file/out"}, "cannot create an output folder"),
    "missing test_file": ({"--test_file": "nope.txt"}, "no such file, folder or glob match"),
    "empty list": ({"--test_file": "empty"}, "no images"),
    "rows naming missing files": ({"--test_file": "missing_rows"}, "no usable rows (2 bad)"),
    "no readable image": ({"--test_file": "corrupt_rows"}, "none of the 2 images can be read"),
    "threshold 2": ({"--th": 2}, r"must be in (0, 1), got 2 (--th)"),
    "threshold 0": ({"--th": 0}, r"must be in (0, 1)"),
    "resize below 64": ({"--resize": 32}, "at least 64"),
    "stride over tile": ({"--resize": "none", "--tile": 64, "--tile-stride": 65}, "stride 65"),
    "winograd without fast": ({"--winograd": ""}, "add --fast"),
    "winograd tile 3": ({"--fast": "", "--winograd": 3}, "invalid choice: 3"),
    "int8 on a GPU": ({"--int8": "", "--device": "cuda"}, "runs on x86 CPUs only"),
    "int8 in fp16": ({"--int8": "", "--amp": "fp16"}, "computes its other layers in bf16"),
    "int8 calibration empty": (
        {"--int8": "", "--int8-calibration": "empty"},
        "no readable calibration images",
    ),
    "unknown option": ({"--thresh": 0.5}, "unrecognized arguments"),
    "output folder is a file": ({"--save_dir": "blocked"}, "cannot create an output folder"),
    "every mask unreadable": ({"--test_file": "corrupt_masks"}, "none of the 2 images"),
}


def _resolve(w, value: object) -> object:
    if isinstance(value, str) and value in w:
        return w[value]
    if isinstance(value, str) and value.startswith(("nope", "a_file", "blocked", "config_dir")):
        return w["root"] / value
    if value == "corrupt_image":
        return w["root"] / "bad1.jpg"
    return value


@pytest.mark.parametrize("kind", sorted(INFER))
@pytest.mark.parametrize("case", sorted(INFERENCE_CASES))
def test_inference_user_errors(world, capsys, kind, case):
    over, expected = INFERENCE_CASES[case]
    argv = _infer_argv(world, kind, **{k: _resolve(world, v) for k, v in over.items()})
    argv = [a for a in argv if a != ""]
    line = _one_line_error(INFER[kind], argv, capsys, world["root"])
    assert expected in line, line
    assert not (Path.cwd() / "PWNED_BY_PICKLE").exists()


def test_missing_pred_dir(world, capsys):
    argv = _infer_argv(world, "binary", **{"--pred-dir": world["root"] / "no_maps"})
    line = _one_line_error(infer_mvss_calmetrics, argv, capsys, world["root"])
    assert "map folder not found (--pred-dir" in line


def test_empty_save_dir(world, capsys):
    argv = _infer_argv(world, "binary")
    argv[argv.index("--save_dir") + 1] = ""
    line = _one_line_error(infer_mvss_calmetrics, argv, capsys, world["root"])
    assert "an empty path is not an output folder (--save_dir)" in line


def test_pred_dir_without_a_map_of_the_list(world, capsys):
    argv = _infer_argv(world, "binary", **{"--pred-dir": world["root"] / "maps_elsewhere"})
    line = _one_line_error(infer_mvss_calmetrics, argv, capsys, world["root"])
    assert "no map of any of the" in line and "maps_elsewhere" in line


def test_three_class_script_refuses_binary_checkpoint(world, capsys):
    argv = _infer_argv(world, "three", **{"--model_path": world["ck"]})
    line = _one_line_error(infer_3labels_merge_calmetrics, argv, capsys, world["root"])
    assert "gives 1-class maps; this script needs 3" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda(world, capsys):
    argv = _infer_argv(world, "binary", **{"--device": "cuda"})
    line = _one_line_error(infer_mvss_calmetrics, argv, capsys, world["root"])
    assert "cuda" in line.lower()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_save_dir(world, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        argv = _infer_argv(world, "binary", **{"--save_dir": locked / "out"})
        line = _one_line_error(infer_mvss_calmetrics, argv, capsys, tmp_path)
    finally:
        locked.chmod(0o700)
    assert "cannot be created or written" in line


def test_classifier_crop_stride_over_crop(world, capsys):
    argv = _infer_argv(world, "cls", **{"--crop": 64, "--crop-stride": 65})
    line = _one_line_error(infer_mvss_cls, argv, capsys, world["root"])
    assert "--crop-stride" in line


@pytest.mark.parametrize("kind", ["three", "cls"])
def test_scripts_that_cannot_resume_say_so_for_skip_existing(world, capsys, kind):
    """The three-class and classifier scripts keep nothing to resume from: --skip-existing
    says so in one line and every image is scored again (it was silently ignored); the
    option is not offered in --help."""
    args = INFER[kind].parse_args([str(a) for a in _infer_argv(world, kind)] + ["--skip-existing"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--skip-existing" in err[0] and "scored again" in err[0]
    assert args.skip_existing is False
    with pytest.raises(SystemExit):
        INFER[kind].parse_args(["--help"])
    assert "--skip-existing" not in capsys.readouterr().out  # not offered


def test_classifier_whole_image_without_a_size(world, capsys):
    """--crop none --resize none had no size to run at: a bare AssertionError (exit 1)."""
    argv = _infer_argv(world, "cls", **{"--crop": "none", "--resize": "none"})
    line = _one_line_error(infer_mvss_cls, argv, capsys, world["root"])
    assert "--crop none --resize none" in line and "--resize is none" in line


# ----------------------------------------------------------------------------- training


def _train_argv(w, kind: str, out: Path, **over: object) -> list[object]:
    lst = w["list3"] if kind == "three" else w["list"]
    opts: dict[str, object] = {
        "--train_list": lst,
        "--val_list": lst,
        "--backbone": "resnet18",
        "--size": 64,
        "--batch_size": 2,
        "--device": "cpu",
        "--epochs": 1,
        "--workers": 0,
        "--out_dir": out,
    }
    opts.update(over)
    return _flatten(opts)


TRAINING_CASES = {
    "missing train list": ({"--train_list": "nope.txt"}, "training data not found"),
    "missing val list": ({"--val_list": "nope.txt"}, "training data not found (--val_list"),
    "empty train list": ({"--train_list": "empty"}, "no samples"),
    "rows naming missing files": ({"--train_list": "missing_rows"}, "no usable rows (2 bad)"),
    "no readable sample": ({"--train_list": "corrupt_rows"}, "none of the 2 samples"),
    "out_dir under a file": ({"--out_dir": "a_file/run"}, "cannot create an output folder"),
    "resume from text": ({"--resume": "text"}, "not a PyTorch weight file"),
    "resume from bare weights": ({"--resume": "other"}, "not a training checkpoint"),
    "resume from missing file": ({"--resume": "nope.pt"}, "not found"),
    "init from another network": ({"--init": "other"}, "no weights for this network"),
    "init from pickle with code": ({"--init": "evil"}, "refused: it holds code"),
    "negative learning rate": ({"--lr": -1}, "lr must be"),
    "unknown option": ({"--epoch": 3}, "unknown option --epoch (did you mean --epochs"),
    "size below 64": ({"--size": 32}, "size"),
    "empty out_dir": ({"--out_dir": ""}, "an empty path is not an output folder"),
    "config is a folder": ({"--config": "config_dir"}, "config is a folder"),
    "config is binary": ({"--config": "corrupt_image"}, "config is not a text (YAML) file"),
    "a list as train_list": ({"--train_list": "[a.txt, b.txt]"}, "expected one path"),
    "unknown best_metric": ({"--best_metric": "latest"}, "choose from last, "),
}


@pytest.mark.parametrize("kind", sorted(TRAIN))
@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_training_user_errors(world, capsys, kind, case):
    over, expected = TRAINING_CASES[case]
    out = world["root"] / f"run_{kind}"
    argv = _train_argv(world, kind, out, **{k: _resolve(world, v) for k, v in over.items()})
    line = _one_line_error(TRAIN[kind], argv, capsys, world["root"])
    assert expected in line, line
    assert not out.exists()
    assert not (Path.cwd() / "PWNED_BY_PICKLE").exists()


@pytest.fixture(scope="module")
def finished_runs(world, tmp_path_factory):
    """A one-step binary run and a one-step classifier run, for resume mismatches."""
    root = tmp_path_factory.mktemp("finished")
    runs = {}
    for kind in ("binary", "cls"):
        out = root / kind
        argv = _train_argv(world, kind, out, **{"--max_steps_per_epoch": 1})
        assert TRAIN[kind].main([str(a) for a in argv]) == 0
        runs[kind] = out / "checkpoints" / "last.pt"
    return runs


def test_resume_from_another_task(world, finished_runs, capsys):
    out = world["root"] / "run_resume_task"
    argv = _train_argv(world, "binary", out, **{"--resume": finished_runs["cls"]})
    line = _one_line_error(train_demo, argv, capsys, world["root"])
    assert "is of a 'classification' run" in line and not out.exists()


def test_resume_from_best_pt_points_to_last_pt(world, finished_runs, capsys):
    """best.pt keeps no optimiser state: resuming from it names the file that can."""
    out = world["root"] / "run_resume_best"
    best = finished_runs["binary"].with_name("best.pt")
    argv = _train_argv(world, "binary", out, **{"--resume": best})
    line = _one_line_error(train_demo, argv, capsys, world["root"])
    assert "without a run's state (no optimizer, " in line and "last.pt" in line, line
    assert not out.exists()


def test_resume_with_another_backbone(world, finished_runs, capsys):
    out = world["root"] / "run_resume_backbone"
    argv = _train_argv(
        world, "binary", out, **{"--resume": finished_runs["binary"], "--backbone": "resnet34"}
    )
    line = _one_line_error(train_demo, argv, capsys, world["root"])
    assert "do not fit this network" in line and not out.exists()


# ----------------------------------------------------------------------------- others


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--size", "32"], "must be at least 64, got 32 (--size)"),
        (["--authentic-ratio", "1.5"], "must be in [0, 1]"),
        (["--train", "0", "--val", "0", "--test", "0"], "nothing to generate"),
        (["--photos", "nope_dir"], "photo folder not found"),
        (["--photos", "empty_dir"], "need at least 2 photographs"),
        (["--photo-split", "nan,0.5,0.5"], "finite numbers ≥ 0, not all 0; got 'nan,0.5,0.5'"),
        (["--photo-split", "inf,1,1"], "finite numbers ≥ 0"),
        (["--photo-split", "1e308,1e308,1"], "finite numbers ≥ 0"),
    ],
)
def test_make_synthetic_data_user_errors(world, capsys, argv, expected):
    (world["root"] / "empty_dir").mkdir(exist_ok=True)
    argv = [str(world["root"] / a) if a.endswith("_dir") else a for a in argv]
    out = world["root"] / "synthetic"
    line = _one_line_error(make_synthetic_data, ["--out", out, *argv], capsys, world["root"])
    assert expected in line and not out.exists()


def test_make_synthetic_data_unwritable_out(world, capsys):
    line = _one_line_error(
        make_synthetic_data, ["--out", world["a_file"] / "x"], capsys, world["root"]
    )
    assert "cannot create an output folder" in line


def test_internal_errors_keep_their_traceback():
    def broken(argv):
        raise RuntimeError("a bug, not a user error")

    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(broken, [])


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """A real Ctrl-C in the middle of a long run (the generator here): no traceback, the
    shell's exit status for SIGINT, and the same command resumes."""
    out = tmp_path / "syn"
    cmd = [sys.executable, str(ROOT / "make_synthetic_data.py"), "--out", str(out)]
    cmd += ["--train", "400", "--val", "0", "--test", "0", "--size", "64", "--workers", "0"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while not (manifest.is_file() and manifest.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted (Ctrl-C)" in err.strip().splitlines()[-1]
    done = len(manifest.read_text().splitlines())
    assert 0 < done < 400
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)  # resumes
    assert len((out / "train.txt").read_text().splitlines()) == 400


def test_debug_shows_the_traceback_of_user_errors(capsys, monkeypatch):
    def body(argv):
        assert "--debug" not in argv
        raise UsageError("bad option", "--x", "try --y")

    assert run_cli(body, ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "error: bad option (--x); try --y"
    monkeypatch.setenv("MVSS_DEBUG", "1")
    assert run_cli(body, []) == 2
    assert "Traceback" in capsys.readouterr().err


def test_only_rank_zero_prints(capsys, monkeypatch):
    def body(argv):
        raise UsageError("bad")

    monkeypatch.setenv("RANK", "1")
    assert run_cli(body, []) == 2
    assert capsys.readouterr().err == ""


def test_real_processes_exit_2_with_one_line(world, tmp_path):
    """The scripts and a benchmark as a user starts them: process exit code 2, one line."""
    commands = {
        "infer": [
            "infer_mvss_calmetrics.py",
            "--model_path",
            str(world["text"]),
            "--test_file",
            str(world["list"]),
            "--save_dir",
            str(tmp_path / "out"),
        ],
        "train": [
            "train_demo.py",
            "--train_list",
            str(world["empty"]),
            "--out_dir",
            str(tmp_path / "run"),
        ],
        "synthetic": ["make_synthetic_data.py", "--out", str(tmp_path / "s"), "--size", "8"],
        "bench": ["-m", "bench.isolated", "tiled", "--tile", "64", "--stride", "128"],
    }
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MVSS_DEBUG", None)
    procs = {
        name: subprocess.Popen(
            [sys.executable, *cmd],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, cmd in commands.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "script", ["infer_mvss_calmetrics", "infer_3labels_merge_calmetrics", "infer_mvss_cls", "serve"]
)
def test_one_process_scripts_refuse_several_under_torchrun(tmp_path, monkeypatch, capsys, script):
    """Inference and the web app run as one process: launched by torchrun with several,
    each would score every image into the same files (measured: two processes each wrote
    all 40 maps of a list into one folder). One line from rank 0, exit 2, nothing written."""
    import importlib

    main = importlib.import_module(script).main
    data = make_tiny_dataset(tmp_path / "data", corrupt=False)
    kind = {"infer_3labels_merge_calmetrics": {"nclass": 3}, "infer_mvss_cls": {"cls_head": "max"}}
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt", **kind.get(script, {}))
    size = ["--tile", "64", "--tile-stride", "48"] if "3labels" in script else ["--resize", "64"]
    out = tmp_path / "out"
    argv = ["--model_path", str(ckpt)]
    if script != "serve":
        argv += ["--test_file", str(data), "--save_dir", str(out)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, lines in (("0", 1), ("1", 0)):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == lines
        if lines:
            assert "runs as one process" in err[0]
            assert ("benchmark.py" in err[0]) == (script != "serve")  # which shares a set out
    assert not out.exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    if script != "serve":  # one process: it runs
        assert main([*argv, *size, "--workers", "0"]) == 0
        assert out.exists()


def test_the_data_generator_refuses_several_processes(tmp_path, monkeypatch, capsys):
    """Its own --workers share the work; under torchrun every process would append the
    same samples to one manifest."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "syn"
    assert make_synthetic_data.main(["--out", str(out), "--train", "2", "--val", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make_synthetic_data.py runs as one process" in err[0]
    assert not out.exists()
