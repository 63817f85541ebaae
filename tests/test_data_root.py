"""The release's list files as they are: paths relative to a dataset root (--data-root)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers import make_tiny_checkpoint, make_tiny_dataset

import benchmark
import infer_mvss_calmetrics
import train_demo
from common.benchmark.runner import read_sets_file
from common.core.user_errors import UsageError
from common.data.sources import load_usable

ROOT = benchmark.Path(benchmark.__file__).resolve().parent


@pytest.fixture(scope="module")
def release_layout(tmp_path_factory):
    """``datasets/COVER/...`` with a list elsewhere naming ``./COVER/...`` paths."""
    base = tmp_path_factory.mktemp("release")
    plain = make_tiny_dataset(base / "plain", corrupt=False)
    data_root = base / "datasets"
    (data_root / "COVER").mkdir(parents=True)
    rows = []
    for line in plain.read_text().splitlines():
        image, mask, label = line.split()
        shutil.copy(plain.parent / image, data_root / "COVER" / image)
        if mask != "None":
            shutil.copy(plain.parent / mask, data_root / "COVER" / mask)
            mask = f"./COVER/{mask}"
        rows.append(f"./COVER/{image} {mask} {label}")
    lists = base / "lists"
    lists.mkdir()
    (lists / "COVERAGE.txt").write_text("\n".join(rows) + "\n")
    return {
        "root": data_root,
        "list": lists / "COVERAGE.txt",
        "ck": make_tiny_checkpoint(base / "ck.pt"),
        "base": base,
    }


def test_relative_paths_resolve_under_the_data_root(release_layout):
    records, problems = load_usable(
        str(release_layout["list"]), "--test_file x", root=release_layout["root"]
    )
    assert len(records) == 5 and not problems
    assert records[0].image == str(release_layout["root"] / "COVER" / "img_00.png")


def test_a_wrong_or_missing_root_is_one_line_showing_a_resolved_path(release_layout, tmp_path):
    with pytest.raises(UsageError) as err:
        load_usable(str(release_layout["list"]), "--test_file l", root=tmp_path)
    line = err.value.line()
    assert "do not resolve under the data root" in line
    assert str(tmp_path / "COVER" / "img_0") in line  # a resolved path, shown
    with pytest.raises(UsageError, match="data root not found"):
        load_usable(str(release_layout["list"]), "--test_file l", root=tmp_path / "nope")


def test_the_inference_script_takes_data_root(release_layout, tmp_path, capsys):
    argv = ["--model_path", str(release_layout["ck"]), "--test_file", str(release_layout["list"])]
    argv += ["--save_dir", str(tmp_path), "--resize", "64", "--workers", "0"]
    assert infer_mvss_calmetrics.main(argv) == 2  # beside the list: nothing there
    capsys.readouterr()
    assert infer_mvss_calmetrics.main([*argv, "--data-root", str(release_layout["root"])]) == 0
    summary = json.loads((tmp_path / "COVERAGE" / "ck" / "summary.json").read_text())
    assert summary["num_images"] == 5 and summary["num_failed"] == 0


def test_the_benchmark_takes_a_root_per_set_and_prints_the_papers_figures(release_layout):
    out = release_layout["base"] / "bench"
    sets_file = release_layout["base"] / "sets.yaml"
    sets_file.write_text(
        f"root: {release_layout['root']}\n"
        "sets:\n"
        f"  COVERAGE:\n    list: {release_layout['list']}\n"
        "    paper: {pixel_f1: 0.453, image_auc: 0.731}\n"
    )
    argv = ["--model_path", str(release_layout["ck"]), "--sets-file", str(sets_file)]
    argv += ["--sets", f"again={release_layout['list']}@{release_layout['root']}"]
    argv += ["--save_dir", str(out), "--resize", "64", "--workers", "0"]
    assert benchmark.main(argv) == 0
    table = (out / "ck" / "benchmark.md").read_text()
    # the file's placeholder root gives way to --data-root on the command line
    sets_file.write_text(sets_file.read_text().replace(str(release_layout["root"]), "/nowhere"))
    assert benchmark.main([*argv, "--data-root", str(release_layout["root"])]) == 0
    assert "| pixel_f1 (paper) | n/a | 0.4530 |" in table  # beside ours, in its set's column
    assert "| image_auc (paper) | n/a | 0.7310 |" in table


def test_training_reads_lists_under_the_data_root(release_layout, tmp_path):
    train_demo.main(
        [
            *("--train_list", str(release_layout["list"])),
            *("--val_list", str(release_layout["list"])),
            *("--data_root", str(release_layout["root"])),
            *("--epochs", "1", "--max_steps_per_epoch", "1", "--out_dir", str(tmp_path / "r")),
            *("--backbone", "resnet18", "--size", "64", "--batch_size", "2", "--workers", "0"),
        ]
    )
    row = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    assert row["val"]["num_images"] == 5


def test_a_wrong_root_in_training_names_the_training_option(release_layout, tmp_path, capsys):
    code = train_demo.main(
        [
            *("--train_list", str(release_layout["list"])),
            *("--data_root", str(tmp_path / "nowhere")),
            *("--out_dir", str(tmp_path / "r"), "--backbone", "resnet18", "--workers", "0"),
        ]
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and f"--data_root {tmp_path / 'nowhere'}" in line, line


def test_the_papers_sets_file_and_training_configs_read():
    sets = read_sets_file(ROOT / "configs" / "paper" / "test_sets.yaml")
    names = [s.name for s in sets]
    assert names == ["CASIAv1plus", "CASIAv1", "Columbia", "COVERAGE", "NIST16", "IMD2020"]
    assert all(s.file_root == "/path/to/datasets" and s.root is None for s in sets)
    assert sets[2].paper == {"pixel_f1": 0.638, "image_auc": 0.980, "image_f1": 0.802}
    from common.training.config import parse_config, read_defaults

    for script, config in [
        ("train_demo", "train_binary"),
        ("train_demo_nclass3", "train_three_class"),
        ("train_demo_cls", "train_classifier"),
    ]:
        defaults, _ = read_defaults(ROOT / "configs" / f"{script}.yaml")
        cfg = parse_config(
            defaults, "t", ["--config", str(ROOT / "configs/paper" / f"{config}.yaml")]
        )
        assert (cfg["size"], cfg["lr"], cfg["optimizer"]) == (512, 1e-4, "adam")


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: x.txt\na: y.txt\n", "'a' is given twice (line 2)"),
        (
            "a: {list: x.txt, rooot: /data}\n",
            "set 'a': unknown key 'rooot' (known: list, root, paper)",
        ),
        ("a: {list: x.txt, papers: {pixel_f1: 0.5}}\n", "unknown key 'papers'"),
        ("sets: {a: x.txt}\nroots: /data\n", "unknown top-level key 'roots' (known: sets, root)"),
    ],
)
def test_a_sets_file_refuses_what_it_would_lose(tmp_path, text, message):
    """A set given twice, or a misspelt key, would be dropped without a word."""
    sets_file = tmp_path / "sets.yaml"
    sets_file.write_text(text)
    with pytest.raises(UsageError, match=re.escape(message)):
        read_sets_file(sets_file)


def test_a_set_named_on_the_command_line_and_in_the_file_is_refused(tmp_path, capsys):
    (tmp_path / "sets.yaml").write_text("a: y.txt\n")
    argv = ["--model_path", "x.pt", "--sets", "a=x.txt", "--sets-file", str(tmp_path / "sets.yaml")]
    assert benchmark.main(argv) == 2
    assert "set names must be unique: a (--sets and --sets-file)" in capsys.readouterr().err


def test_a_path_holding_an_at_sign_reaches_the_set_whole(tmp_path, monkeypatch):
    """``--sets NAME=SOURCE@ROOT`` splits at an ``@``; a list or folder whose own path
    holds one (``user@host`` mounts, e-mail-named folders) is kept whole, with or without
    a root after it."""
    from common.benchmark.runner import parse_sets

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "me@lab" / "set"
    folder.mkdir(parents=True)
    (folder / "test.txt").write_text("a.jpg None 0\n")
    (tmp_path / "root@2").mkdir()
    whole, rooted, relative, plain = parse_sets(
        [
            f"a={folder / 'test.txt'}",
            f"b={folder / 'test.txt'}@{tmp_path / 'root@2'}",
            "c=me@lab/set@root@2",
            f"d={folder}@/data",
        ]
    )
    assert (whole.source, whole.root) == (str(folder / "test.txt"), None)
    assert (rooted.source, rooted.root) == (str(folder / "test.txt"), str(tmp_path / "root@2"))
    assert (relative.source, relative.root) == ("me@lab/set", "root@2")
    assert (plain.source, plain.root) == (str(folder), "/data")
