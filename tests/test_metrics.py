"""Every metric against scikit-learn or a plain per-image reference written here."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    f1_score,
    jaccard_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from common.evaluation.metrics import (
    ClassificationEvaluator,
    LocalizationEvaluator,
    ThreeClassEvaluator,
    best_f1_from_histograms,
)


def reference_pixel_f1(probs, masks, labels, empty=1.0):
    """The release's evaluation, one image at a time."""
    scores = []
    for p, m, lab in zip(probs, masks, labels, strict=True):
        if lab == 0:
            continue
        pred, gt = p > 0.5, m > 0
        tp = np.sum(pred & gt)
        fp = np.sum(pred & ~gt)
        fn = np.sum(~pred & gt)
        den = 2 * tp + fp + fn
        scores.append(empty if den == 0 else 2 * tp / den)
    return float(np.mean(scores))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    n, h, w = 12, 16, 20
    masks = (rng.random((n, h, w)) < 0.3).astype(np.uint8)
    labels = np.array([1] * 8 + [0] * 4)
    masks[8:] = 0
    masks[3] = 0  # tampered image whose mask is empty: no pixel AUC
    probs = np.clip(masks * 0.4 + rng.random((n, h, w)) * 0.6, 0, 1).astype(np.float32)
    probs[5] = 0.0  # all-zero prediction
    return probs, masks, labels


def test_pixel_metrics_match_references(batch):
    probs, masks, labels = batch
    ev = LocalizationEvaluator()
    ev.update(probs[:5], masks[:5], labels[:5])
    ev.update(probs[5:], masks[5:], labels[5:])
    r = ev.compute()
    assert r["pixel_f1"] == pytest.approx(reference_pixel_f1(probs, masks, labels))
    t = labels > 0
    flat_p, flat_g = (probs[t] > 0.5).ravel(), masks[t].ravel()
    assert r["pixel_f1_micro"] == pytest.approx(f1_score(flat_g, flat_p))
    assert r["pixel_iou_micro"] == pytest.approx(jaccard_score(flat_g, flat_p))
    assert r["pixel_precision_micro"] == pytest.approx(precision_score(flat_g, flat_p))
    assert r["pixel_recall_micro"] == pytest.approx(recall_score(flat_g, flat_p))
    per_image_iou = [
        jaccard_score(m.ravel(), (p > 0.5).ravel(), zero_division=1.0)
        for p, m in zip(probs[t], masks[t], strict=True)
    ]
    assert r["pixel_iou"] == pytest.approx(np.mean(per_image_iou))
    aucs = [
        roc_auc_score(m.ravel(), p.ravel())
        for p, m in zip(probs[t], masks[t], strict=True)
        if 0 < m.sum() < m.size
    ]
    assert r["num_pixel_auc_images"] == 7  # the empty mask is excluded, not scored 0
    assert r["pixel_auc"] == pytest.approx(np.mean(aucs), abs=2e-3)
    assert r["pixel_auc_micro"] == pytest.approx(
        roc_auc_score(masks[t].ravel(), probs[t].ravel()), abs=2e-3
    )


def test_binned_auc_is_exact_on_8bit_maps(batch):
    probs, masks, labels = batch
    q = np.floor(probs * 255) / 255  # maps read back from the release's PNGs
    ev = LocalizationEvaluator()
    ev.update(q, masks, labels)
    t = labels > 0
    assert ev.compute()["pixel_auc_micro"] == pytest.approx(
        roc_auc_score(masks[t].ravel(), q[t].ravel()), abs=1e-12
    )


def test_image_metrics_match_sklearn(batch):
    probs, masks, labels = batch
    ev = LocalizationEvaluator()
    ev.update(probs, masks, labels)
    r = ev.compute()
    scores = probs.reshape(len(probs), -1).max(1)
    pred = scores > 0.5
    sens = recall_score(labels, pred)
    spec = recall_score(1 - labels, ~pred)
    assert r["image_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert r["image_sensitivity"] == pytest.approx(sens)
    assert r["image_specificity"] == pytest.approx(spec)
    assert r["image_f1"] == pytest.approx(2 * sens * spec / (sens + spec))
    assert r["image_f1_precision_recall"] == pytest.approx(f1_score(labels, pred))
    assert r["com_f1"] == pytest.approx(
        2 * r["pixel_f1"] * r["image_f1"] / (r["pixel_f1"] + r["image_f1"])
    )
    assert r["num_images"] == 12


def test_empty_rule_release_vs_seed():
    probs = np.zeros((1, 4, 4), np.float32)
    masks = np.zeros((1, 4, 4), np.uint8)
    for rule, expected in (("release", 1.0), ("seed", 0.0)):
        ev = LocalizationEvaluator(empty_f1=rule)
        ev.update(probs, masks, [1])
        assert ev.compute()["pixel_f1"] == expected


def test_all_ones_map_and_single_class_gives_none_not_zero():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[:, :2] = 1
    ev = LocalizationEvaluator()
    ev.update(np.ones((3, 4, 4), np.float32), masks, [1, 1, 1])
    r = ev.compute()
    assert r["pixel_f1"] == pytest.approx(2 * 8 / (2 * 8 + 8))
    assert r["image_auc"] is None and r["image_specificity"] is None
    assert r["image_f1"] is None and r["com_f1"] is None
    assert any("image_auc" in n for n in r["notes"])


def test_nan_scores_rejected():
    ev = LocalizationEvaluator()
    probs = np.full((1, 4, 4), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        ev.update(probs, None, [1])
    cls = ClassificationEvaluator()
    with pytest.raises(ValueError, match="NaN"):
        cls.update([0.2, float("nan")], [0, 1])


def test_oracle_f1_at_least_fixed_threshold(batch):
    probs, masks, labels = batch
    ev = LocalizationEvaluator()
    ev.update(probs, masks, labels)
    r = ev.compute()
    assert r["pixel_f1_best_threshold"] >= r["pixel_f1"] - 1e-9
    # brute force on one image: best F1 over the bin thresholds
    p, m = probs[0].ravel(), masks[0].ravel() > 0
    best = max(f1_score(m, p >= k / 1000, zero_division=1.0) for k in range(1001))
    pos = np.bincount(np.minimum((p[m] * 1000).astype(int), 999), minlength=1000)
    neg = np.bincount(np.minimum((p[~m] * 1000).astype(int), 999), minlength=1000)
    import torch

    got = best_f1_from_histograms(torch.tensor(pos), torch.tensor(neg), 1.0).item()
    assert got == pytest.approx(best, abs=1e-9)


def test_merge_equals_single_pass(batch):
    probs, masks, labels = batch
    one = LocalizationEvaluator()
    one.update(probs, masks, labels)
    a, b = LocalizationEvaluator(), LocalizationEvaluator()
    a.update(probs[:7], masks[:7], labels[:7])
    b.update(probs[7:], masks[7:], labels[7:])
    a.merge(b)
    ra, ro = a.compute(), one.compute()
    for key in ("pixel_f1", "pixel_auc", "pixel_auc_micro", "image_auc", "com_f1"):
        assert ra[key] == pytest.approx(ro[key])


def _three_class_case():
    rng = np.random.default_rng(1)
    n, h, w = 6, 12, 12
    target = rng.integers(0, 3, (n, h, w))
    logits = rng.normal(size=(n, 3, h, w)) + 2.0 * np.eye(3)[target].transpose(0, 3, 1, 2)
    target[4] = 0  # only pristine pixels: classes 1 and 2 empty in the truth
    logits[4, 0] += 10.0  # … and in the prediction: the seed's F1 = 0, IoU = 0, AUC = 0
    target[5] = 1  # tampered everywhere: AUC of class 1 undefined
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return target, probs


def test_three_class_micro_against_sklearn():
    target, probs = _three_class_case()
    ev = ThreeClassEvaluator()
    ev.update(probs[:2], target[:2])
    ev.update(probs[2:], target[2:])
    r = ev.compute()
    pred = probs.argmax(1)
    t, p = target.ravel(), pred.ravel()
    for c, name in ((1, "tampered"), (2, "desensitised")):
        assert r[f"f1_{name}_micro"] == pytest.approx(f1_score(t == c, p == c))
        assert r[f"iou_{name}_micro"] == pytest.approx(jaccard_score(t == c, p == c))
        assert r[f"mcc_{name}_micro"] == pytest.approx(matthews_corrcoef(t == c, p == c))
        assert r[f"auc_{name}_micro"] == pytest.approx(
            roc_auc_score(t == c, probs[:, c].ravel()), abs=2e-3
        )
        fp = np.sum((p == c) & (t != c))
        tn = np.sum((p != c) & (t != c))
        assert r[f"fpr_{name}_micro"] == pytest.approx(fp / (fp + tn))
    assert r["miou_micro"] == pytest.approx(jaccard_score(t, p, average="macro"))
    assert r["pixel_accuracy_micro"] == pytest.approx(np.mean(t == p))
    assert r["mean_pixel_accuracy_micro"] == pytest.approx(recall_score(t, p, average="macro"))


def _seed_reference(target, probs, empty_f1=0.0):
    """A straightforward per-image reference of the seed's definitions."""
    rows = []
    for truth, prob in zip(target, probs, strict=True):
        pred = prob.argmax(0)
        row = {}
        for c, name in ((1, "tampered"), (2, "desensitised")):
            g, q = truth == c, pred == c
            tp, fp = float(np.sum(g & q)), float(np.sum(~g & q))
            fn, tn = float(np.sum(g & ~q)), float(np.sum(~g & ~q))
            row[f"f1_{name}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else empty_f1
            row[f"iou_{name}"] = tp / (tp + fp + fn) if tp + fp + fn else 0.0
            row[f"fpr_{name}"] = fp / (fp + tn) if fp + tn else 0.0
            den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) + 1e-5
            row[f"mcc_{name}"] = (tp * tn - fp * fn) / den
            levels = np.floor(prob[c] * 255) / 255  # the 8-bit map as written
            both = 0 < g.sum() < g.size
            row[f"auc_{name}"] = roc_auc_score(g.ravel(), levels.ravel()) if both else 0.0
        labels = [0, 1, 2]
        present = [k for k in labels if np.any(truth == k) or np.any(pred == k)]
        row["miou"] = np.mean(
            [jaccard_score(truth.ravel() == k, pred.ravel() == k) for k in present]
        )
        row["pixel_accuracy"] = float(np.mean(truth == pred))
        in_truth = [k for k in labels if np.any(truth == k)]
        row["mean_pixel_accuracy"] = np.mean([np.mean(pred[truth == k] == k) for k in in_truth])
        rows.append(row)
    return rows


@pytest.mark.parametrize("rule", ["seed", "release"])
def test_three_class_per_image_seed_definitions(rule):
    target, probs = _three_class_case()
    ev = ThreeClassEvaluator(empty_f1=rule)
    rows = ev.update(probs[:3], target[:3]) + ev.update(probs[3:], target[3:])
    reference = _seed_reference(target, probs, empty_f1=1.0 if rule == "release" else 0.0)
    assert len(rows) == len(reference) == 6
    for got, want in zip(rows, reference, strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-9), key
    assert rows[4]["f1_tampered"] == (1.0 if rule == "release" else 0.0)
    assert rows[4]["auc_tampered"] == 0.0 and rows[5]["auc_tampered"] == 0.0
    r = ev.compute()
    for key in reference[0]:
        assert r[key] == pytest.approx(np.mean([row[key] for row in reference]), abs=1e-9)
    assert any("auc_tampered: 2 image(s)" in note for note in r["notes"])


def test_classification_metrics():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 50)
    scores = np.clip(labels * 0.3 + rng.random(50) * 0.7, 0, 1)
    ev = ClassificationEvaluator()
    ev.update(scores[:20], labels[:20])
    ev.update(scores[20:], labels[20:])
    r = ev.compute()
    pred = scores > 0.5
    assert r["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert r["f1"] == pytest.approx(f1_score(labels, pred))
    assert r["mcc"] == pytest.approx(matthews_corrcoef(labels, pred))
    assert r["accuracy"] == pytest.approx(np.mean(pred == labels))
    assert np.sum(r["confusion_matrix"]) == 50
    single = ClassificationEvaluator()
    single.update([0.9, 0.8], [1, 1])
    assert single.compute()["auc"] is None


@pytest.mark.parametrize(
    ("scores", "labels", "undefined"),
    [
        ([0.1, 0.2, 0.3], [0, 1, 1], {"precision", "mcc"}),  # nothing flagged
        ([0.9, 0.8, 0.7], [0, 1, 1], {"mcc"}),  # everything flagged
        ([0.1, 0.2], [0, 0], {"precision", "recall", "f1", "mcc", "auc"}),  # all authentic
        ([0.9, 0.2], [1, 1], {"fpr", "mcc", "auc"}),  # all manipulated
    ],
)
def test_classification_f1_is_a_value_wherever_it_has_one(scores, labels, undefined):
    """F1 is 2TP/(2TP+FP+FN), as scikit-learn and the seed take it: 0 when nothing was
    flagged but something should have been (it was null, as the harmonic mean of an
    undefined precision); what is null says why under notes."""
    ev = ClassificationEvaluator()
    ev.update(scores, labels)
    r = ev.compute()
    pred = np.asarray(scores) > 0.5
    nulls = {k for k in ("precision", "recall", "f1", "mcc", "fpr", "auc") if r[k] is None}
    assert nulls == undefined
    if "f1" not in undefined:
        assert r["f1"] == pytest.approx(f1_score(labels, pred, zero_division=0.0))
    for key in nulls:
        assert any(note.startswith(f"{key} undefined") for note in r["notes"]), key
