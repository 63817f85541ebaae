"""load_weights: every supported format, prefixes, and refusal of unsafe files."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file

from models import WeightsError, get_mvss_cls, load_weights, read_state_dict
from tests.conftest import build


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    return build(backbone="resnet18", nclass=1)


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s},
        lambda s: {"model": s, "epoch": 3, "config": {"lr": 1e-4}},
        lambda s: {f"module.{k}": v for k, v in s.items()},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
    ],
    ids=["bare", "state_dict", "model+meta", "module-prefix", "nested-prefix"],
)
def test_round_trip_pth(tmp_path, source, wrap):
    path = tmp_path / "w.pth"
    torch.save(wrap(source.state_dict()), path)
    target = build(backbone="resnet18")
    report = load_weights(target, path)
    assert report.ok
    _assert_same(source, target)


def test_round_trip_safetensors(tmp_path, source):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = build(backbone="resnet18")
    load_weights(target, path)
    _assert_same(source, target)


def test_into_ddp_like_wrapper(tmp_path, source):
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    wrapper = torch.nn.Module()
    wrapper.module = build(backbone="resnet18")
    inner = torch.nn.DataParallel(wrapper.module)
    load_weights(inner, path)
    _assert_same(source, inner.module)


def test_mismatch_names_keys(tmp_path, source):
    state = dict(source.state_dict())
    state.pop("head.out.1.bias")
    state["extra.weight"] = torch.zeros(1)
    state["head.out.1.weight"] = torch.zeros(3, 256, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        load_weights(build(backbone="resnet18"), path)
    msg = str(err.value)
    assert "head.out.1.bias" in msg and "extra.weight" in msg and "head.out.1.weight" in msg
    assert "bad.pth" in msg


def test_non_strict_loads_the_rest(tmp_path, source):
    state = dict(source.state_dict())
    state.pop("head.out.1.bias")
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    target = build(backbone="resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = load_weights(target, path, strict=False)
    assert report.missing == ["head.out.1.bias"]
    assert torch.equal(target.head.out[1].weight, source.head.out[1].weight)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_refuses_malicious_pickle_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"model.conv1.weight": _Exploit()}, fh)
    with pytest.raises(WeightsError, match=r"evil\.pth: refused: it holds code"):
        read_state_dict(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint at all", b"\x80\x04K\x05.", b"a b c\n" * 100]
)
def test_refuses_non_weight_files(tmp_path, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"junk\.pth"):
        read_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no such weight file"):
        read_state_dict(tmp_path / "nope.pth")


def test_classifier_takes_localisation_weights_strict(tmp_path, source):
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls_net = get_mvss_cls(backbone="resnet18").eval()
    load_weights(cls_net, path, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        _edge, seg, score = cls_net(x)
        _ref_edge, ref_seg = source.eval()(x)
    torch.testing.assert_close(seg, ref_seg)
    torch.testing.assert_close(score, torch.sigmoid(ref_seg).amax(dim=(1, 2, 3)))
    assert score.shape == (2,)


def test_classifier_linear_head():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_mvss_cls(backbone="resnet18", head="linear", num_image_classes=3).eval()
    with torch.inference_mode():
        _, _, logits = net(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3)
    with pytest.raises(ValueError, match="max"):
        get_mvss_cls(backbone="resnet18", head="mlp")


def test_pretrained_base_from_local_file(tmp_path):
    from models import build_resnet

    torch.manual_seed(3)
    imagenet = build_resnet("resnet18")
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    net = build(backbone="resnet18", pretrained_base=str(path))
    assert torch.equal(net.model.layer3[0].conv1.weight, imagenet.layer3[0].conv1.weight)
    assert torch.equal(net.noise_extractor.model.conv1.weight, imagenet.conv1.weight)
    with pytest.raises(WeightsError):
        build(backbone="resnet50", pretrained_base=str(path))


def test_random_init_warns():
    from models import get_mvss

    with pytest.warns(UserWarning, match="randomly initialised"):
        get_mvss(backbone="resnet18")


def _with_seed_aliases(state):
    """A state dict as the seed's models save it: every backbone stage also under the
    ``blocks`` ModuleList alias (blocks.i = model.layer{i+1}), noise branch included."""
    out = dict(state)
    for key, value in state.items():
        for prefix in ("", "noise_extractor."):
            head = f"{prefix}model.layer"
            if key.startswith(head):
                stage, rest = key[len(head) :].split(".", 1)
                out[f"{prefix}blocks.{int(stage) - 1}.{rest}"] = value.clone()
    return out


def test_seed_checkpoint_with_stage_aliases_loads_strict(tmp_path, source):
    state = _with_seed_aliases(source.state_dict())
    assert any(k.startswith("blocks.3.") for k in state)
    assert any(k.startswith("noise_extractor.blocks.0.") for k in state)
    path = tmp_path / "seed.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    target = build(backbone="resnet18", nclass=1)
    load_weights(target, path, strict=True)
    _assert_same(source, target)


def test_seed_alias_that_differs_is_refused_by_name(tmp_path, source):
    state = _with_seed_aliases(source.state_dict())
    key = next(k for k in state if k.startswith("noise_extractor.blocks.2.") and "weight" in k)
    state[key] = state[key] + 1
    path = tmp_path / "bad_seed.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=rf"{key.replace('.', '[.]')} should be a copy of"):
        load_weights(build(backbone="resnet18", nclass=1), path, strict=True)


def test_a_checkpoints_digest_is_read_once_per_version_of_the_file(tmp_path, monkeypatch):
    """One evaluation asks for the digest several times (thresholds, int8 cache, report):
    the file is hashed once, and again only when it is rewritten."""
    import hashlib

    from common.core.checkpoint import checkpoint_digest, save_checkpoint

    reads = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda fh, d: reads.append(1) or real(fh, d))
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    first = checkpoint_digest(path)
    assert checkpoint_digest(str(path)) == first and checkpoint_digest(path) == first
    assert len(reads) == 1
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})  # same name, same size, new bytes
    second = checkpoint_digest(path)
    assert second != first and len(reads) == 2
    with open(path, "r+b") as fh:  # rewritten in place: same inode and size
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1_000_000))
    assert checkpoint_digest(path) not in (first, second)
    assert len(reads) == 3


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch.save", "legacy-pickle"])
def test_a_checkpoints_config_and_thresholds_are_read_without_its_tensors(
    tmp_path, monkeypatch, zip_format
):
    """A command reads a checkpoint's config and thresholds before its weights: tensors
    are mapped from the file, not read (a ResNet-50 last.pt is 1.8 GB); the legacy
    format, which cannot be mapped, is read as before."""
    from models.weights import read_checkpoint_config, read_checkpoint_entry

    path = tmp_path / "ck.pt"
    state = {"model": {"w": torch.arange(6.0)}, "config": {"backbone": "resnet18"}}
    state["thresholds"] = {"pixel": 0.4, "image": 0.6}
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    mapped, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: mapped.append(k["mmap"]) or real(*a, **k))
    assert read_checkpoint_config(path) == {"backbone": "resnet18"}
    assert read_checkpoint_entry(path, "thresholds") == {"pixel": 0.4, "image": 0.6}
    assert mapped == [zip_format]  # read once, mapped where the format allows


def test_a_file_system_that_cannot_map_the_file_gets_it_read(tmp_path, monkeypatch):
    from models.weights import read_checkpoint_config

    path = tmp_path / "ck.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {"backbone": "resnet34"}}, path)
    real = torch.load

    def no_mapping(*args, **kwargs):
        if kwargs["mmap"]:
            raise OSError("mmap: operation not supported")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", no_mapping)
    assert read_checkpoint_config(path) == {"backbone": "resnet34"}
