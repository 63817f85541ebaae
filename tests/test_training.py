"""Configs, the training engine and the three training scripts on tiny data (CPU)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import train_demo
import train_demo_cls
import train_demo_nclass3
from common.core.user_errors import UsageError
from common.training.checks import check_values
from common.training.config import ConfigError, parse_config, read_defaults
from common.training.engine import NonFiniteLossError, Trainer
from common.training.optim import build_optimizer, freeze_unused, lr_factor
from common.training.tasks import ClassificationTask, LocalizationTask, ThreeClassTask
from models import get_mvss_cls, load_weights
from tests.helpers import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY_BATCH = 2
TINY = [
    "--backbone",
    "resnet18",
    "--size",
    "64",
    "--batch_size",
    str(TINY_BATCH),
    "--workers",
    "0",
    "--tensorboard",
    "false",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("train") / "d", n_tampered=4, n_authentic=2)


def test_config_layers_and_suggestions(tmp_path):
    defaults = {
        "lr": 0.1,
        "epochs": 3,
        "amp": "off",
        "jpeg_quality": [70, 100],
        "init": None,
        "channels_last": False,
    }
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.5\nepochs: 7\n")
    cfg = parse_config(
        defaults,
        "t",
        [
            "--config",
            str(cfg_file),
            "--epochs",
            "9",
            "--jpeg-quality",
            "[50, 60]",
            "--channels-last",
            "true",
        ],
    )
    assert cfg == {
        "lr": 0.5,
        "epochs": 9,
        "amp": "off",
        "jpeg_quality": [50, 60],
        "init": None,
        "channels_last": True,
    }
    cfg_file.write_text("learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        parse_config(defaults, "t", ["--config", str(cfg_file)])
    with pytest.raises(UsageError, match=r"unknown option --epoch \(did you mean --epochs"):
        parse_config(defaults, "t", ["--epoch", "x"])
    with pytest.raises(UsageError, match="expected an integer, got 'x'"):
        parse_config(defaults, "t", ["--epochs", "x"])


def test_shipped_configs_parse():
    for name in ("train_demo", "train_demo_nclass3", "train_demo_cls"):
        cfg, comments = read_defaults(ROOT / "configs" / f"{name}.yaml")
        assert cfg["lr"] == 1e-4 and cfg["optimizer"] == "adam" and cfg["amp"] == "off"
        assert "base" not in cfg and set(comments) == set(cfg)  # every option documented


def test_a_config_layers_over_its_base(tmp_path):
    """The three training files keep the shared options in one base file."""
    (tmp_path / "base.yaml").write_text("a: 1  # first\nb: 2  # second\n")
    (tmp_path / "task.yaml").write_text("base: base.yaml\nb: 3  # task's own\nc: 4  # extra\n")
    values, comments = read_defaults(tmp_path / "task.yaml")
    assert values == {"a": 1, "b": 3, "c": 4}
    assert comments == {"a": "first", "b": "task's own", "c": "extra"}


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_are_fused_on_cpu(name):
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    opt = build_optimizer(params, {"optimizer": name, "lr": 0.1, "weight_decay": 0.0})
    assert opt.defaults["fused"] is True
    sum(p.sum() for p in params).backward()
    opt.step()
    assert all((p < 1).all() for p in params)  # the fused step moved every parameter
    with pytest.raises(ValueError, match="adam, adamw or sgd"):
        build_optimizer(params, {"optimizer": "lamb", "lr": 0.1, "weight_decay": 0.0})


def test_lr_schedule():
    cfg = {
        "warmup_steps": 2,
        "scheduler": "cosine",
        "min_lr_ratio": 0.0,
        "gamma": 0.1,
        "step_epochs": 1,
    }
    assert lr_factor(0, cfg, 5, 12) == pytest.approx(0.5)
    assert lr_factor(2, cfg, 5, 12) == pytest.approx(1.0)
    assert lr_factor(12, cfg, 5, 12) == pytest.approx(0.0, abs=1e-9)
    cfg["scheduler"] = "step"
    assert lr_factor(7, cfg, 5, 12) == pytest.approx(0.1)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_demo_end_to_end_and_checkpoint_contents(data, tmp_path):
    out = tmp_path / "run"
    train_demo.main(
        [
            "--train_list",
            str(data),
            "--val_list",
            str(data),
            "--epochs",
            "1",
            "--out_dir",
            str(out),
            "--pixel_bce",
            "0.5",
            *TINY,
        ]
    )
    state = _weights(out / "checkpoints" / "last.pt")  # weights_only=True loads it
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "config", "rng"} <= state.keys()
    assert state["config"]["model"] == {"backbone": "resnet18", "nclass": 1}
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "config.yaml").is_file()
    row = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert row["skipped_samples"] == 1  # the corrupt image, counted
    assert row["val"]["num_images"] == 6 and "com_f1" in row["val"]
    header, values = (line.split(",") for line in (out / "log.csv").read_text().splitlines())
    logged = dict(zip(header, values, strict=True))
    # every loss term and every LOG_KEYS metric reaches log.csv with a value
    for key in ("train_loss", "train_pixel_bce", "val_pixel_iou", "val_pixel_auc", "val_com_f1"):
        assert logged[key] != "", key
    assert float(logged["train_pixel_bce"]) == pytest.approx(row["train_pixel_bce"], rel=1e-4)
    # best.pt carries the thresholds chosen on its validation set, for every script
    stored = _weights(out / "checkpoints" / "best.pt")["thresholds"]
    assert stored["task"] == "localization" and stored["chosen_on"] == data.stem
    assert stored["images"] == row["val"]["num_images"]  # the images validation scored
    assert stored["pixel"] is None or 0 <= stored["pixel"] < 1
    assert "thresholds" not in state  # last.pt resumes; best.pt is the one that is used
    # best.pt: the same weights, without the optimiser's state (a third of last.pt's size)
    best = _weights(out / "checkpoints" / "best.pt")
    assert best.keys() == {"model", "epoch", "best_score", "config", "thresholds"}
    assert all(torch.equal(best["model"][k], v) for k, v in state["model"].items())
    assert best["config"] == state["config"] and best["epoch"] == state["epoch"] == 0


def test_a_best_pt_starts_a_new_run_with_every_weight(data, tmp_path, caplog):
    """best.pt without the optimiser's state is still a whole set of weights for --init."""
    argv = ["--train_list", str(data), "--val_list", str(data), "--epochs", "1", *TINY]
    first, second = tmp_path / "first", tmp_path / "second"
    assert train_demo.main([*argv, "--max_steps_per_epoch", "1", "--out_dir", str(first)]) == 0
    best = first / "checkpoints" / "best.pt"
    caplog.set_level(logging.INFO, logger="mvss")
    init = ["--init", str(best), "--max_steps_per_epoch", "1", "--out_dir", str(second)]
    assert train_demo.main([*argv, *init]) == 0
    assert f"initialised from {best} (all keys match)" in caplog.text


def test_what_a_run_skips_or_resumes_with_is_said(data, tmp_path, caplog):
    """An unreadable validation file is named once and counted on the epoch line; a
    resume that changes a training setting says which; resuming a finished run says there
    is nothing to train."""
    out = tmp_path / "run"
    argv = ["--train_list", str(data), "--val_list", str(data), "--out_dir", str(out), *TINY]
    argv += ["--max_steps_per_epoch", "1"]
    caplog.set_level(logging.INFO, logger="mvss")
    assert train_demo.main([*argv, "--epochs", "2"]) == 0
    corrupt = str(data.parent / "corrupt.jpg")
    said = [r.getMessage() for r in caplog.records if "validation: skipped" in r.getMessage()]
    assert len(said) == 1 and corrupt in said[0]  # two epochs, said once
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 2 and all("(and 1 in validation)" in line for line in epochs)

    last = tmp_path / "last.pt"
    shutil.copy(out / "checkpoints" / "last.pt", last)
    state = torch.load(last, weights_only=True)
    state["epoch"] = 0  # as if the run had stopped after its first epoch
    middle = tmp_path / "middle.pt"
    torch.save(state, middle)
    for checkpoint, extra, expected in [
        (last, ["--epochs", "2"], "nothing to train: the run resumed has finished its 2 epochs"),
        (
            last,
            ["--epochs", "3", "--lr", "0.001"],
            "other settings than the run had (it continues with the new ones): "
            "epochs 2 → 3; lr 0.0001 → 0.001",
        ),
        (middle, ["--epochs", "2", "--best_metric", "pixel_f1"], None),  # validation only
    ]:
        caplog.clear()
        assert train_demo.main([*argv, "--resume", str(checkpoint), *extra]) == 0
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        warned = [w for w in warned if "validation: skipped" not in w]
        if expected is None:
            assert warned == [], warned
        else:
            assert len(warned) == 1 and expected in warned[0], warned


def _validation_reports(monkeypatch, *epochs: dict[str, float]) -> None:
    """Validation runs as usual but reports these values, one dict per validated epoch."""
    validate, values = Trainer.validate, iter(epochs)
    monkeypatch.setattr(Trainer, "validate", lambda self: {**validate(self), **next(values)})


@pytest.mark.parametrize("best_metric, best_epoch", [("com_f1", 0), ("last", 1)])
def test_best_pt_is_the_best_validated_epoch_or_with_last_the_latest(
    data, tmp_path, monkeypatch, best_metric, best_epoch
):
    """Validation that gets worse in the second epoch: com_f1 keeps the first epoch in
    best.pt, ``last`` the second, each with the thresholds chosen on its own validation."""
    _validation_reports(monkeypatch, {"com_f1": 0.9}, {"com_f1": 0.1})
    out = tmp_path / "run"
    argv = ["--train_list", str(data), "--val_list", str(data), "--epochs", "2"]
    assert train_demo.main([*argv, "--best_metric", best_metric, "--out_dir", str(out), *TINY]) == 0
    best = _weights(out / "checkpoints" / "best.pt")
    assert best["epoch"] == best_epoch and _weights(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert best["thresholds"]["chosen_on"] == data.stem


def test_resumed_with_another_best_metric_the_next_epoch_becomes_best_pt(
    data, tmp_path, monkeypatch
):
    """The saved best score measured com_f1 (0.9); resumed to keep by pixel_f1 (0.1), the
    first epoch must not have to beat a score of another metric."""
    fixed = {"com_f1": 0.9, "pixel_f1": 0.1}
    _validation_reports(monkeypatch, fixed, fixed)  # epoch 1, then the resumed epoch 2
    out = tmp_path / "run"
    argv = ["--train_list", str(data), "--val_list", str(data), "--out_dir", str(out), *TINY]
    assert train_demo.main([*argv, "--epochs", "1"]) == 0
    shutil.copy(out / "checkpoints" / "last.pt", tmp_path / "epoch1.pt")
    resume = ["--resume", str(tmp_path / "epoch1.pt"), "--best_metric", "pixel_f1"]
    assert train_demo.main([*argv, "--epochs", "2", *resume]) == 0
    best = _weights(out / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 and best["best_score"] == pytest.approx(0.1)


class _KilledError(Exception):
    pass


def test_resume_equals_uninterrupted(data, tmp_path, monkeypatch):
    common = [
        "--train_list",
        str(data),
        "--val_list",
        str(data),
        "--hflip",
        "0.5",
        "--jpeg_p",
        "0.5",
        "--accumulate",
        "2",
        "--clip_grad",
        "1.0",
        "--epochs",
        "3",
        "--warmup_steps",
        "2",
        *TINY,
    ]
    full = tmp_path / "full"
    train_demo.main([*common, "--out_dir", str(full)])

    part = tmp_path / "part"
    real_epoch = Trainer.train_epoch

    def killed_in_epoch_2(self, epoch):
        if epoch == 1:
            raise _KilledError  # the process dies in the middle of epoch 2
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_epoch_2)
    with pytest.raises(_KilledError):
        train_demo.main([*common, "--out_dir", str(part)])
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    shutil.copy(part / "checkpoints" / "last.pt", tmp_path / "epoch1.pt")
    train_demo.main([*common, "--out_dir", str(part), "--resume", str(tmp_path / "epoch1.pt")])

    a = _weights(full / "checkpoints" / "last.pt")["model"]
    b = _weights(part / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = _weights(tmp_path / "epoch1.pt")["model"]
    assert not all(torch.equal(a[k], first[k]) for k in a)  # later epochs changed something
    log_rows = (part / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in log_rows] == [1, 2, 3]


def test_nclass3_and_cls_scripts(tmp_path):
    d3 = make_tiny_dataset(tmp_path / "d3", three_class=True, corrupt=False)
    train_demo_nclass3.main(
        [
            "--train_list",
            str(d3),
            "--val_list",
            str(d3),
            "--epochs",
            "1",
            "--out_dir",
            str(tmp_path / "n3"),
            *TINY,
        ]
    )
    row = json.loads((tmp_path / "n3" / "log.jsonl").read_text().splitlines()[-1])
    assert "miou" in row["val"] and "f1_desensitised" in row["val"]
    for head in ("max", "linear"):
        out = tmp_path / f"cls_{head}"
        train_demo_cls.main(
            [
                "--train_list",
                str(d3),
                "--val_list",
                str(d3),
                "--epochs",
                "1",
                "--head",
                head,
                "--out_dir",
                str(out),
                *TINY,
            ]
        )
        row = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
        assert "auc" in row["val"]
        stored = _weights(out / "checkpoints" / "best.pt")["thresholds"]
        assert stored["task"] == "classification" and stored["pixel"] is None
        net = get_mvss_cls(backbone="resnet18", head=head)
        load_weights(net, out / "checkpoints" / "last.pt")


def test_nonfinite_losses_stop_the_run(data, tmp_path, monkeypatch):
    cfg = parse_config(
        __import__("common.training.config", fromlist=["read_defaults"]).read_defaults(
            ROOT / "configs" / "train_demo.yaml"
        )[0],
        "t",
        [
            "--train_list",
            str(data),
            "--epochs",
            "1",
            "--out_dir",
            str(tmp_path / "nan"),
            "--max_nonfinite",
            "1",
            *TINY,
        ],
    )
    task = LocalizationTask(cfg)
    real = task.loss

    def nan_loss(outputs, batch):
        parts = real(outputs, batch)
        parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(task, "loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="consecutive non-finite"):
        Trainer(cfg, task).fit()
    assert not (tmp_path / "nan" / "checkpoints" / "last.pt").exists()


TASKS = {
    "localization": ("train_demo", LocalizationTask, {}),
    "three_class": ("train_demo_nclass3", ThreeClassTask, {}),
    "cls_max": ("train_demo_cls", ClassificationTask, {"head": "max"}),
    "cls_linear3": (
        "train_demo_cls",
        ClassificationTask,
        {"head": "linear", "num_image_classes": 3},
    ),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_every_parameter_gets_a_gradient_from_an_authentic_only_batch(name):
    """A batch without manipulated samples must still reach every trainable parameter,
    or DDP's reductions go out of step between processes (the crash of issue 11)."""
    script, task_cls, extra = TASKS[name]
    cfg, _ = read_defaults(ROOT / "configs" / f"{script}.yaml")
    cfg.update(backbone="resnet18", **extra)
    task = task_cls(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg)
    freeze_unused(model)
    model.train()
    n = 2
    batch = {
        "image": torch.randn(n, 3, 64, 64),
        "mask": torch.zeros(n, 64, 64, dtype=torch.long)
        if task.nclass == 3
        else torch.zeros(n, 1, 64, 64),
        "edge": torch.zeros(n, 1, 16, 16),
        "label": torch.zeros(n, dtype=torch.long),
        "type": torch.zeros(n, dtype=torch.long),
        "image_class": torch.zeros(n, dtype=torch.long),
    }
    task.loss(model(batch["image"]), batch)["loss"].backward()
    trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 100
    assert [k for k, p in trainable if p.grad is None] == []


def _tiny_cfg(data: Path, out: Path, **over: object) -> dict:
    """train_demo's defaults on the tiny data: one epoch of ResNet-18 at 64 px on CPU."""
    cfg, _ = read_defaults(ROOT / "configs" / "train_demo.yaml")
    cfg.update(
        train_list=str(data),
        backbone="resnet18",
        size=64,
        batch_size=2,
        epochs=1,
        workers=0,
        device="cpu",
        out_dir=str(out),
        tensorboard=False,
    )
    cfg.update(over)
    return cfg


def test_a_loss_that_misses_parameters_fails_clearly(data, tmp_path, monkeypatch):
    cfg = _tiny_cfg(data, tmp_path / "run")
    task = LocalizationTask(cfg)

    def image_term_only(outputs, batch):  # the edge branch never gets a gradient
        parts = task.criterion(
            outputs[0].detach(), outputs[1], batch["mask"], batch["edge"], batch["label"]
        )
        return {**parts, "loss": parts["clf"]}

    monkeypatch.setattr(task, "loss", image_term_only)
    with pytest.raises(RuntimeError, match=r"trainable parameters got no gradient.*erb_db_1"):
        Trainer(cfg, task).fit()


def test_classifier_validation_scores_crops_as_inference_does(tmp_path):
    """best.pt of train_demo_cls is chosen on whole images scored over crops, as
    infer_mvss_cls.py scores them: both give the same numbers for the same weights."""
    import infer_mvss_cls

    data = make_tiny_dataset(tmp_path / "d", n_tampered=3, n_authentic=3, corrupt=False)
    out = tmp_path / "cls"
    argv = ["--train_list", str(data), "--val_list", str(data), "--epochs", "1"]
    train_demo_cls.main([*argv, "--out_dir", str(out), *TINY])
    val = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["val"]
    inference = ["--model_path", str(out / "checkpoints" / "last.pt"), "--test_file", str(data)]
    crops = ["--crop", "64", "--crop-stride", "64", "--workers", "0"]
    crops += ["--batch-size", str(TINY_BATCH)]  # validation's crops per forward: same batches
    code = infer_mvss_cls.main([*inference, "--save_dir", str(tmp_path / "inf"), *crops])
    assert code == 0
    inferred = json.loads((tmp_path / "inf" / "test" / "last" / "summary.json").read_text())
    assert val["num_images"] == inferred["num_images"] == 6
    for key in ("auc", "accuracy", "fpr"):
        assert val[key] == pytest.approx(inferred[key], abs=1e-9), key


def test_classifier_validation_outputs_equal_inference_scores(tmp_path):
    """Per image: the validation output of train_demo_cls's task is the crop that
    infer_mvss_cls.py's score_image picks, not a resized whole image."""
    from common.inference.crops import manipulated_score, score_image
    from common.inference.single_image import RunOptions
    from common.training.loaders import build_dataset

    data = make_tiny_dataset(tmp_path / "d", n_tampered=2, n_authentic=1, corrupt=False)
    cfg, _ = read_defaults(ROOT / "configs" / "train_demo_cls.yaml")
    cfg.update(backbone="resnet18", size=64, batch_size=2)
    task = ClassificationTask(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg).eval()
    ds = build_dataset(str(data), cfg, 1, train=False, eval_size=task.eval_size(cfg))
    from common.data.transforms import MinSide

    assert isinstance(ds.transform, MinSide)  # whole images (under 64 px: scaled up)
    opts = RunOptions(tile_batch=2)
    for i in range(len(ds)):
        item = ds[i]
        with torch.inference_mode():
            _, _, cls = task.val_outputs(model, {"image": item["image"][None]})
            resized = model(torch.nn.functional.interpolate(item["image"][None], size=(64, 64)))
        image = cv2.imread(item["path"])
        want, crops = score_image(model, image, opts, 64, 64, None, "negative")
        assert crops == 4  # 72×88 in 64-px crops
        assert float(manipulated_score(cls, "negative")[0]) == pytest.approx(want, abs=1e-6)
        assert float(resized[2][0]) != pytest.approx(want, abs=1e-6)
    # images smaller than the network's 64 px: both scale them up the same way
    small = make_tiny_dataset(tmp_path / "s", n_tampered=1, n_authentic=1, size=(40, 50))
    ds = build_dataset(str(small), cfg, 1, train=False, eval_size=task.eval_size(cfg))
    for i in range(len(ds)):
        item = ds[i]
        if "error" in item:
            continue
        assert tuple(item["image"].shape[-2:]) == (64, 80)
        with torch.inference_mode():
            _, _, cls = task.val_outputs(model, {"image": item["image"][None]})
        want, _ = score_image(model, cv2.imread(item["path"]), opts, 64, 64, None, "negative")
        assert float(manipulated_score(cls, "negative")[0]) == pytest.approx(want, abs=1e-6)


def test_a_desensitised_only_image_raises_a_three_class_head_score_only_where_manipulated():
    """With three image classes, the score is 1 − P(authentic) where desensitised-only
    images count as manipulated, and P(tampered) where they do not: a confidently
    desensitised-only image must not look manipulated under the classifier's default."""
    from common.inference.crops import manipulated_score

    desensitised_only = torch.tensor([[0.0, 0.0, 6.0]])
    assert float(manipulated_score(desensitised_only, "positive")[0]) > 0.99
    for policy in ("negative", "ignore"):
        assert float(manipulated_score(desensitised_only, policy)[0]) < 0.01
    two = torch.tensor([[0.0, 6.0]])  # two image classes: the policy has nothing to change
    assert manipulated_score(two, "negative") == manipulated_score(two, "positive")


@pytest.mark.parametrize("desensitised", ["negative", "positive", "ignore"])
def test_a_three_class_image_head_validates_as_inference_scores(tmp_path, desensitised):
    """--head linear --num_image_classes 3: validation scores and labels each image as
    infer_mvss_cls.py does under the same --desensitised, so best.pt (chosen by auc) is
    chosen on the numbers inference reports. Validation gave the evaluator the three
    softmax classes and the image classes, so a desensitised-only image counted as
    manipulated whatever the policy."""
    from sklearn.metrics import roc_auc_score

    from common.data.masks import MaskOptions
    from common.data.sources import load_source
    from common.inference.crops import iter_scores
    from common.inference.single_image import RunOptions
    from common.training.loaders import build_dataset

    data = make_tiny_dataset(tmp_path / "d", n_tampered=2, n_authentic=2, three_class=True)
    rng = np.random.default_rng(3)
    for i in range(2):  # desensitised-only images, listed as manipulated
        image = rng.integers(0, 120, (72, 88, 3), dtype=np.uint8)
        mask = np.zeros((72, 88), np.uint8)
        mask[10:40, 20:60] = 2
        image[mask > 0] = 200
        cv2.imwrite(str(data.parent / f"des_{i}.png"), image)
        cv2.imwrite(str(data.parent / f"des_mask_{i}.png"), mask)
        with open(data, "a") as fh:
            fh.write(f"des_{i}.png des_mask_{i}.png 1\n")
    cfg, _ = read_defaults(ROOT / "configs" / "train_demo_cls.yaml")
    cfg.update(backbone="resnet18", size=64, batch_size=2, head="linear", num_image_classes=3)
    cfg.update(desensitised=desensitised, val_list=str(data))
    task = ClassificationTask(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg).eval()
    ds = build_dataset(str(data), cfg, 1, train=False, eval_size=task.eval_size(cfg))
    evaluator = task.new_evaluator()
    with torch.inference_mode():
        for i in range(len(ds)):
            item = ds[i]
            if "error" in item:
                continue
            batch = {k: item[k][None] for k in ("image", "label", "image_class")}
            task.eval_update(evaluator, task.val_outputs(model, batch), batch)
    validation = evaluator.compute()

    records, _ = load_source(data)
    masks = MaskOptions(threshold=127, desensitised=desensitised)
    results = iter_scores(model, records, RunOptions(), 64, 64, None, masks, 1, 0)
    scored = [r for _, r in results if "error" not in r and r["label"] >= 0]
    labels = [r["label"] for r in scored]
    assert labels.count(1) == (4 if desensitised == "positive" else 2)
    assert validation["num_images"] == len(scored)
    want = roc_auc_score(labels, [r["score"] for r in scored])
    assert validation["auc"] == pytest.approx(want, abs=1e-9)


def test_a_window_that_ends_on_an_empty_batch_still_steps(data, tmp_path, monkeypatch):
    """With accumulate 2, a window whose last batch held no usable sample (every file
    bad) steps on what it gathered instead of merging into the next window."""
    cfg = _tiny_cfg(data, tmp_path / "run", accumulate=2)
    trainer = Trainer(cfg, LocalizationTask(cfg))
    from common.data.datasets import collate_samples

    items = [trainer.train_ds[i] for i in range(len(trainer.train_ds))]
    good = collate_samples([it for it in items if "error" not in it][:2])
    empty = {"skipped": [("bad.jpg", "truncated JPEG")], "skipped_rows": [1], "count": 0}
    batches = [good, empty, good, good]
    monkeypatch.setattr("common.training.engine.train_loader", lambda *a, **k: iter(batches))
    trainer.batches_per_epoch = len(batches)
    stats = trainer.train_epoch(0)
    assert stats["optimizer_steps"] == 2 and stats["skipped_samples"] == 1


def test_validation_at_the_original_size_takes_one_image_per_batch(tmp_path):
    """The classifier validates whole images of different sizes: they cannot be stacked."""
    from common.training.loaders import build_dataset, val_loader

    a = make_tiny_dataset(tmp_path / "a", n_tampered=1, n_authentic=1, corrupt=False)
    b = make_tiny_dataset(tmp_path / "b", n_tampered=1, n_authentic=1, size=(80, 96), corrupt=False)
    from common.data.sources import read_list_file

    records = read_list_file(a)[0] + read_list_file(b)[0]  # paths resolved beside each list
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("".join(f"{r.image} {r.mask or 'None'} {r.label}\n" for r in records))
    cfg, _ = read_defaults(ROOT / "configs" / "train_demo_cls.yaml")
    cfg.update(backbone="resnet18", size=64, batch_size=2, workers=0)
    task = ClassificationTask(cfg)
    ds = build_dataset(str(mixed), cfg, 1, train=False, eval_size=task.eval_size(cfg))
    batches = list(val_loader(ds, cfg))
    assert len(batches) == 4 and all(b["count"] == 1 for b in batches)
    assert {tuple(b["image"].shape[-2:]) for b in batches} == {(72, 88), (80, 96)}


def test_amp_auto_follows_what_the_machine_measures(monkeypatch):
    """``amp: auto`` trains in bf16 only where bf16 matrix products measure faster than
    fp32 here (AMX: yes; AVX-512 BF16 without AMX: depends on the CPU; AVX2: no)."""
    from common.core import runtime

    cpu = torch.device("cpu")
    assert runtime.resolve_amp("bf16", cpu) == ("bf16", "as configured")
    for gain, expected in ((5.0, "bf16"), (runtime.BF16_MIN_GAIN, "bf16"), (0.6, "off")):
        monkeypatch.setattr(runtime, "bf16_matmul_gain", lambda g=gain: g)
        choice, why = runtime.resolve_amp("auto", cpu)
        assert choice == expected and f"{gain:.2f}×" in why
    monkeypatch.undo()
    assert runtime.bf16_matmul_gain(n=128, reps=1) > 0
    check_values({"amp": "auto"})  # a valid training setting
    with pytest.raises(UsageError, match="amp"):
        check_values({"amp": "fastest"})


@pytest.mark.parametrize("task_cls", [LocalizationTask, ThreeClassTask])
def test_crop_training_validates_whole_images_at_their_size(tmp_path, task_cls):
    """Trained on crops, the localisation tasks validate each image at its own size
    (as inference sees it), not resized to the crop size; trained on resized images,
    validation resizes as training did."""
    from common.data.transforms import MinSide
    from common.training.loaders import build_dataset

    data = make_tiny_dataset(tmp_path / "d", n_tampered=2, n_authentic=1, corrupt=False)
    name = "train_demo.yaml" if task_cls is LocalizationTask else "train_demo_nclass3.yaml"
    cfg, _ = read_defaults(ROOT / "configs" / name)
    cfg.update(backbone="resnet18", size=64, batch_size=2, crop=True)
    task = task_cls(cfg)
    assert task.eval_size(cfg) is None
    ds = build_dataset(str(data), cfg, task.nclass, False, task.eval_size(cfg))
    assert isinstance(ds.transform, MinSide)
    assert tuple(ds[0]["image"].shape[-2:]) == (72, 88)  # the file's size, not 64×64
    cfg["val_size"] = 96  # an explicit validation size wins over the crop rule
    ds = build_dataset(str(data), cfg, task.nclass, False, task.eval_size(cfg))
    assert tuple(ds[0]["image"].shape[-2:]) == (96, 96)
    cfg.update(crop=False, val_size=None)
    ds = build_dataset(str(data), cfg, task.nclass, False, task.eval_size(cfg))
    assert tuple(ds[0]["image"].shape[-2:]) == (64, 64)


def test_crop_training_validates_images_of_different_sizes(tmp_path):
    """A crop-trained run validates a list whose images differ in size (non-square,
    one per batch) and stores thresholds chosen there in best.pt."""
    a = make_tiny_dataset(tmp_path / "a", n_tampered=2, n_authentic=1, corrupt=False)
    b = make_tiny_dataset(tmp_path / "b", n_tampered=1, n_authentic=1, size=(96, 72), corrupt=False)
    rows = []
    for listed in (a, b):  # one list over both folders, with absolute paths
        for line in listed.read_text().splitlines():
            image, mask, label = line.split()
            mask = mask if mask == "None" else str(listed.parent / mask)
            rows.append(f"{listed.parent / image} {mask} {label}")
    val = tmp_path / "val.txt"
    val.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    argv = ["--train_list", str(a), "--val_list", str(val), "--epochs", "1", "--crop", "true"]
    code = train_demo.main([*argv, "--out_dir", str(out), *TINY])
    assert code == 0
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["config"]["crop"] is True
    assert best["thresholds"]["images"] == 5  # every validation image, each at its own size


def test_loader_workers_that_would_share_the_cores_are_named(monkeypatch):
    """On CPU, loader processes beside compute threads that already fill the cores get
    one line saying so; on CUDA, with spare cores, or with 0 workers, nothing."""
    from common.training.loaders import workers_compete

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    line = workers_compete(2, cpu)
    assert line is not None and "2 cores" in line and "workers: 0" in line
    assert workers_compete(0, cpu) is None
    assert workers_compete(2, cuda) is None
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert workers_compete(2, cpu) is None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 processes × (2 threads + 1 worker) > 8
    assert workers_compete(1, cpu) is not None


@pytest.mark.parametrize("config", ["train_demo.yaml", "train_demo_nclass3.yaml"])
def test_training_batches_do_not_depend_on_the_loader_worker_count(tmp_path, config):
    """The same samples, augmented the same way, in the same batches, with 0 or 2 loader
    workers (each sample's augmentation is seeded by epoch and index, not by the worker
    that draws it); the next epoch draws other augmentations. The three-class config has
    random flips, rotations, colour, blur, noise and JPEG."""
    from common.training.loaders import build_dataset, train_loader

    data = make_tiny_dataset(tmp_path / "d", n_tampered=4, n_authentic=3, corrupt=False)
    cfg, _ = read_defaults(ROOT / "configs" / config)
    cfg.update(size=48, crop=True, hflip=0.5, batch_size=3)

    def batches(workers: int, epoch: int) -> list[dict]:
        cfg["workers"] = workers
        ds = build_dataset(str(data), cfg, 3 if "nclass3" in config else 1, train=True)
        return list(train_loader(ds, cfg, epoch))

    inline = batches(0, 0)
    in_workers = batches(2, 0)
    assert len(inline) == len(in_workers) == 3
    for a, b in zip(inline, in_workers, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    by_index = {int(i): x for b in inline for i, x in zip(b["index"], b["image"], strict=True)}
    later = {int(i): x for b in batches(0, 1) for i, x in zip(b["index"], b["image"], strict=True)}
    assert any(not torch.equal(by_index[i], later[i]) for i in by_index)


def test_seeded_pipelines_give_each_transform_its_own_stream():
    """Seeded per sample, a crop's position and a flip's coin come from different streams:
    the flip happens about half the time, whatever position the crop drew (albumentations'
    own seeding hands both the same seed, which ties the coin to the crop's row); the same
    seed repeats the same augmentation."""
    import albumentations as A
    import numpy as np

    from common.data.transforms import AugmentConfig, build_train_transform, seed_pipeline

    pipeline = build_train_transform(AugmentConfig(size=8, crop=True, hflip=0.5))
    columns = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    image = np.dstack([columns, columns.T, columns])  # each pixel holds its column and row
    mask = np.zeros((64, 64), np.uint8)

    def augmented(index: int) -> tuple[bool, int, int]:
        seed_pipeline(pipeline, (7, index))
        crop = pipeline(image=image, mask=mask)["image"].astype(int)
        return bool(crop[0, 0, 0] > crop[0, -1, 0]), int(crop[..., 0].min()), int(crop[0, 0, 1])

    nested = build_train_transform(
        AugmentConfig(size=8, crop=True, one_of=("hflip", "brightness_contrast"), jpeg_p=0.5)
    )
    seed_pipeline(nested, (7, 0))
    nodes = [nested, *nested.transforms, *nested.transforms[-2].transforms]
    assert isinstance(nested.transforms[-2], A.OneOf)
    assert len({node.seed for node in nodes}) == len(nodes)  # OneOf's children too

    draws = [augmented(index) for index in range(400)]
    assert augmented(3) == draws[3]
    flipped = np.array([d[0] for d in draws])
    assert 0.4 < flipped.mean() < 0.6
    for position in (1, 2):  # the crop's left column, then its top row
        where = np.array([d[position] for d in draws])
        assert len(set(where)) > 30  # crop positions spread over the image
        assert abs(where[flipped].mean() - where[~flipped].mean()) < 6


def test_classifier_on_crops_refuses_a_validation_size(tmp_path, data, capsys):
    """The crop-trained classifier validates as infer_mvss_cls.py scores (crops over the
    whole image, never resized): a val_size there is refused in one line before any run
    folder is made, not ignored."""
    out = tmp_path / "cls"
    argv = ["--train_list", str(data), "--val_list", str(data), "--crop", "true"]
    code = train_demo_cls.main([*argv, "--val_size", "96", "--out_dir", str(out), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "--val_size 96" in err[0] and "crop" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("recorded", [True, False])
def test_a_best_score_measured_on_another_score_is_not_kept_on_resume(
    data, tmp_path, monkeypatch, caplog, recorded
):
    """A classifier with three image classes under ``negative`` validates on P(tampered).
    A run from before that was recorded (best_score measured on 1 − P(authentic)) must not
    make the resumed epochs beat its number: the next validated epoch becomes best.pt. A
    run that recorded the same score keeps its best."""
    _validation_reports(monkeypatch, {"auc": 0.9}, {"auc": 0.1})
    out = tmp_path / "run"
    argv = ["--train_list", str(data), "--val_list", str(data), "--out_dir", str(out), *TINY]
    argv += ["--head", "linear", "--num_image_classes", "3", "--desensitised", "negative"]
    assert train_demo_cls.main([*argv, "--epochs", "1"]) == 0
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["val_score"] == "P(tampered)"
    if not recorded:
        del state["config"]["val_score"]  # as an earlier stop wrote it
    torch.save(state, tmp_path / "epoch1.pt")
    with caplog.at_level("INFO"):
        resume = ["--resume", str(tmp_path / "epoch1.pt")]
        assert train_demo_cls.main([*argv, "--epochs", "2", *resume]) == 0
    best = _weights(out / "checkpoints" / "best.pt")
    said = "measured on 1 - P(pristine), this run validates on P(tampered)" in caplog.text
    if recorded:
        assert best["epoch"] == 0 and best["best_score"] == pytest.approx(0.9) and not said
    else:
        assert best["epoch"] == 1 and best["best_score"] == pytest.approx(0.1) and said


def test_steps_the_fp16_gradient_scaler_skips_are_counted_and_said(data, tmp_path, caplog):
    """fp16's gradient scaler skips a step whose gradients are not finite and halves its
    scale, with a finite loss: the run's log counts those steps and gives the scale, and
    a run losing its gradients that way is told so (a NaN in the Sobel gate's gradient
    once took a GPU run's scale to 1e-14 with "0 non-finite steps" in its log)."""
    cfg = _tiny_cfg(data, tmp_path / "run")
    trainer = Trainer(cfg, LocalizationTask(cfg))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)  # as under --amp fp16
    trainer.scaler.scale(torch.ones(()))  # its scale starts at the first scaled loss
    trainer.main = True
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    for grad, skipped in ((float("nan"), 1), (1.0, 1), (float("inf"), 2)):
        for p in trainer.model.parameters():
            p.grad = torch.zeros_like(p) if p.requires_grad else None
        param.grad.fill_(grad)
        trainer._optimizer_step()
        assert trainer.scaler_skips == skipped
    assert trainer.scaler.get_scale() == 0.5  # 2 → 1 → (kept) → 0.5
    caplog.set_level(logging.WARNING, logger="mvss")
    trainer._say_if_scaler_fails(3, trainer.scaler.get_scale())
    assert "skipped 2 of 3 steps" in caplog.text and "--amp bf16" in caplog.text
    caplog.clear()
    trainer.scaler_skips = 1
    trainer._say_if_scaler_fails(100, 1024.0)  # a scaler finding its scale: quiet
    assert not caplog.text
    stats = trainer.train_epoch(0)
    assert stats["scaler_skipped_steps"] == 0 and stats["loss_scale"] == 0.5


def test_a_resumed_log_keeps_its_rows_under_their_columns(tmp_path):
    """A run resumed by a version (or with settings) that logs other columns: log.csv is
    rewritten under the new columns plus its own, rows by column name, before new rows
    are appended; no column's history is lost."""
    import csv

    from common.core.reports import CsvLog

    path = tmp_path / "log.csv"
    with CsvLog(path, ["epoch", "train_loss", "lr"]) as old:
        old.write({"epoch": 1, "train_loss": 0.5, "lr": 0.1})
    with CsvLog(path, ["epoch", "loss_scale", "lr"], append=True) as new:  # no train_loss
        new.write({"epoch": 2, "loss_scale": 8.0, "lr": 0.05})
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "loss_scale", "lr", "train_loss"]  # both histories
    assert rows[0] == {"epoch": "1", "train_loss": "0.500000", "loss_scale": "", "lr": "0.100000"}
    assert rows[1] == {"epoch": "2", "train_loss": "", "loss_scale": "8.000000", "lr": "0.050000"}
    with CsvLog(path, ["epoch", "loss_scale", "lr"], append=True) as again:  # no rewrite now
        again.write({"epoch": 3, "lr": 0.01})
    with open(path, newline="") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2", "3"]


def test_fp32_on_a_gpu_validates_without_tf32(data, tmp_path, monkeypatch):
    """Validation chooses the thresholds inference applies, and inference in fp32 on a GPU
    runs without TF32: so does an fp32 run's validation (training itself keeps TF32); the
    flags are restored after, even when validation fails."""
    import contextlib

    from common.core.runtime import exact_fp32
    from common.training import engine

    flags = (torch.backends.cudnn, torch.backends.cuda.matmul)
    before = [flag.allow_tf32 for flag in flags]
    try:
        for flag in flags:
            flag.allow_tf32 = True
        with exact_fp32(torch.device("cuda")):
            assert [flag.allow_tf32 for flag in flags] == [False, False]
        assert [flag.allow_tf32 for flag in flags] == [True, True]
        with pytest.raises(KeyError), exact_fp32(torch.device("cuda")):
            raise KeyError("validation failed")
        assert [flag.allow_tf32 for flag in flags] == [True, True]
        with exact_fp32(torch.device("cpu")):  # nothing to do on a CPU
            assert [flag.allow_tf32 for flag in flags] == [True, True]
    finally:
        for flag, value in zip(flags, before, strict=True):
            flag.allow_tf32 = value

    entered: list[str] = []
    inside = [False]

    @contextlib.contextmanager
    def recorder(device):
        entered.append(device.type)
        inside[0] = True
        yield
        inside[0] = False

    forwards: list[bool] = []
    plain_forward = Trainer._forward

    def forward(self, images, model=None):
        forwards.append(inside[0])
        return plain_forward(self, images, model)

    monkeypatch.setattr(engine, "exact_fp32", recorder)
    monkeypatch.setattr(Trainer, "_forward", forward)
    for amp, expected in (("off", ["cpu"]), ("bf16", [])):
        entered.clear(), forwards.clear()
        cfg = _tiny_cfg(data, tmp_path / amp, val_list=str(data), amp=amp)
        Trainer(cfg, LocalizationTask(cfg)).validate()
        assert entered == expected
        assert forwards and all(forwards) == (amp == "off")
