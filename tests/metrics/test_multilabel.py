"""Multi-label metrics against scikit-learn, against literal ports of the peers' functions and hand-worked cases.

The ``_peer_*`` functions below restate the peers' code (reference/multilabel-and-zerodiff-gaps.md
section 2) line by line in numpy, to pin each preset to the codebase it names.
"""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from digzsl_ray.metrics import multilabel as ml


# --- literal ports of the peers' functions ------------------------------------------------------
def _peer_dualcoop_map(targs, preds):
    """DualCoOp utils/helper.py::mAP (average_precision with argsort()[::-1], eps denominator)."""
    eps = 1e-8
    ap = np.zeros(preds.shape[1])
    for k in range(preds.shape[1]):
        scores, targets = preds[:, k], targs[:, k]
        indices = scores.argsort()[::-1]
        pos_count = 0.0
        total = targets.sum()
        prec_at_i = 0.0
        for i, idx in enumerate(indices, 1):
            if targets[idx] == 1:
                pos_count += 1
                prec_at_i += pos_count / i
        ap[k] = prec_at_i / (total + eps)
    return 100 * ap.mean()


def _peer_overall_f1(gt, scores, k, relevant=None):
    """SDL/DualCoOp calc_F1 (overall): top-k per image; SDL drops images without a relevant label."""
    if relevant is not None:
        gt, scores = gt[relevant], scores[relevant]
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    tp = sum(gt[i, ranked[i]].sum() for i in range(len(gt)))
    p = tp / (len(gt) * k) * 100
    r = tp / gt.sum() * 100
    return 0.0 if p == 0 or r == 0 else 2 * p * r / (p + r)


def _peer_lesa_map(labels_pm1, scores):
    """LESA core/utils.py::compute_AP: mask |label|==1, sklearn AP, empty classes left at 0."""
    ap = np.zeros(labels_pm1.shape[1])
    for c in range(labels_pm1.shape[1]):
        m = np.abs(labels_pm1[:, c]) == 1
        y = np.clip(labels_pm1[m, c], 0, 1)
        if y.sum() == 0:
            continue
        ap[c] = average_precision_score(y, scores[m, c])
    return 100 * ap.mean()


def _peer_biam_map(labels_pm1, scores):
    """BiAM util_nus.py::compute_AP: mask |label|==1, sort descending, sum prec@pos / #pos."""
    ap = np.zeros(labels_pm1.shape[1])
    for c in range(labels_pm1.shape[1]):
        m = np.abs(labels_pm1[:, c]) == 1
        y, s = labels_pm1[m, c], scores[m, c]
        if (y > 0).sum() == 0:
            continue
        order = np.argsort(-s, kind="stable")
        hits = (y[order] > 0).astype(float)
        prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        ap[c] = (prec * hits).sum() / hits.sum()
    return 100 * ap.mean()


def _random(seed, n=60, c=7, p_pos=0.25, masked=0.0, empty_col=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < p_pos).astype(int)
    if empty_col is not None:
        y[:, empty_col] = 0
    s = rng.normal(size=(n, c)) + 1.5 * y  # continuous: no ties
    pm1 = 2 * y - 1
    pm1[rng.random((n, c)) < masked] = 0
    return s, y, pm1


# --- against scikit-learn -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_ap_equals_sklearn(seed):
    s, y, _ = _random(seed)
    want = [average_precision_score(y[:, c], s[:, c]) * 100 for c in range(y.shape[1])]
    for ties in ("index", "grouped"):  # no ties in continuous scores: both rules agree with sklearn
        got = ml.average_precision(s, y, ml.protocol("dualcoop", ties=ties))
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_grouped_ties_equal_sklearn_and_index_ties_differ():
    rng = np.random.default_rng(5)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    s = np.round(rng.normal(size=(200, 4)) + y, 0)  # few distinct values: many ties
    want = [average_precision_score(y[:, c], s[:, c]) * 100 for c in range(4)]
    np.testing.assert_allclose(ml.average_precision(s, 2 * y - 1, "lesa"), want, rtol=1e-12)
    assert not np.allclose(ml.average_precision(s, y, "dualcoop"), want)


# --- presets against the peers' code ------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_presets_reproduce_peer_code(seed):
    s, y, pm1 = _random(seed, masked=0.2, empty_col=3)
    assert ml.mean_ap(s, y, "dualcoop") == pytest.approx(_peer_dualcoop_map(y, s), abs=1e-5)
    assert ml.mean_ap(s, y, "sdl") == pytest.approx(_peer_dualcoop_map(y, s), abs=1e-5)
    assert ml.mean_ap(s, pm1, "lesa") == pytest.approx(_peer_lesa_map(pm1, s), rel=1e-12)
    assert ml.mean_ap(s, pm1, "biam") == pytest.approx(_peer_biam_map(pm1, s), rel=1e-12)
    y[::7] = 0  # some images without any label
    for k in (3, 5):
        assert ml.top_k(s, y, k, "dualcoop")["F1"] == pytest.approx(_peer_overall_f1(y, s, k))
        assert ml.top_k(s, y, k, "sdl")["F1"] == pytest.approx(_peer_overall_f1(y, s, k, y.sum(1) > 0))


# --- hand-worked cases --------------------------------------------------------------------------
def test_hand_worked_ap_and_empty_class():
    # One class, ranking: pos, neg, pos, neg -> AP = (1/1 + 2/3) / 2 = 83.33; second class has no positive.
    s = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    assert ml.average_precision(s, y)[0] == pytest.approx(250 / 3)
    assert ml.mean_ap(s, y, "dualcoop") == pytest.approx(250 / 6)  # empty class counts as 0
    assert ml.mean_ap(s, y, ml.protocol("dualcoop", empty_class="skip")) == pytest.approx(250 / 3)


def test_hand_worked_pm1_masks_unannotated_entries():
    # Masking the negative ranked second removes it: AP becomes (1 + 2/2) / 2 = 100.
    s = np.array([[0.9], [0.8], [0.7], [0.6]])
    pm1 = np.array([[1], [0], [1], [-1]])
    assert ml.mean_ap(s, pm1, "biam") == pytest.approx(100.0)
    assert ml.mean_ap(s, pm1, "lesa") == pytest.approx(100.0)
    assert ml.mean_ap(s, (pm1 == 1).astype(int), "dualcoop") == pytest.approx(250 / 3)  # 0 = negative


def test_hand_worked_tie_rules():
    # pos and neg tied at the top: index order puts the earlier (pos) image first -> AP 100;
    # grouped: one threshold with precision 1/2 -> AP 50.
    s = np.array([[0.5], [0.5]])
    y = np.array([[1], [0]])
    assert ml.mean_ap(s, y, "dualcoop") == pytest.approx(100.0)
    assert ml.mean_ap(s, 2 * y - 1, "lesa") == pytest.approx(50.0)
    assert ml.mean_ap(s[::-1], y[::-1], "dualcoop") == pytest.approx(50.0)


def test_hand_worked_top_k_and_unlabelled_images():
    # 3 images, 4 classes; top-2 each. Image 2 has no label.
    s = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.9, 0.3], [0.5, 0.4, 0.3, 0.2]])
    y = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
    r = ml.top_k(s, y, 2, "dualcoop")  # TP: image0 {0}, image1 {2,3} -> 3; preds 6; positives 4
    assert (r["P"], r["R"]) == pytest.approx((50.0, 75.0))
    assert r["F1"] == pytest.approx(2 * 50 * 75 / 125)
    r = ml.top_k(s, y, 2, "sdl")  # image 2 dropped: preds 4
    assert (r["P"], r["R"]) == pytest.approx((75.0, 75.0))
    r = ml.top_k(s, y, 9, "dualcoop")  # k > C predicts every column
    assert (r["P"], r["R"]) == pytest.approx((100 * 4 / 12, 100.0))


def test_tied_top_k_prefers_lower_class_index():
    s = np.zeros((1, 4))
    y = np.array([[0, 1, 0, 0]])
    assert ml.top_k(s, y, 1)["R"] == 0.0
    assert ml.top_k(s, y, 2)["R"] == 100.0


def test_zsl_gzsl_keys_and_columns():
    s, y, _ = _random(7, c=6)
    out = ml.zsl_gzsl(s, y, unseen=[4, 5])
    assert set(out) == {f"{p}_{m}" for p in ("zsl", "gzsl") for m in
                        ("mAP", "F1@3", "P@3", "R@3", "F1@5", "P@5", "R@5")}
    assert out["zsl_mAP"] == pytest.approx(ml.mean_ap(s[:, 4:], y[:, 4:]))
    assert out["gzsl_mAP"] == pytest.approx(ml.mean_ap(s, y))


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown multi-label metric preset 'coco'"):
        ml.protocol("coco")
    with pytest.raises(ValueError, match="coding='x'"):
        ml.Protocol(coding="x")
    with pytest.raises(ValueError, match=r"must both be \[N images, C classes\]"):
        ml.mean_ap(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="labels in"):
        ml.mean_ap(np.zeros((2, 1)), np.array([[2], [1]]), "biam")
    with pytest.raises(ValueError, match="NaN"):
        ml.mean_ap(np.array([[np.nan]]), np.array([[1]]))
