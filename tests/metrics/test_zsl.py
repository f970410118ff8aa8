"""Metric functions against scikit-learn, and the lambda search on a case with a known answer."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix

from digzsl_ray.metrics import zsl as ev

SEEN, UNSEEN = [0, 1, 2, 3], [4, 5, 6]
C = 7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_per_class_accuracy_is_balanced_accuracy(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, 500)
    p = np.where(rng.random(500) < 0.4, y, rng.integers(0, C, 500))
    assert ev.mean_per_class_accuracy(y, p, list(range(C))) == pytest.approx(balanced_accuracy_score(y, p) * 100)


def test_zsl_top1_restricts_to_unseen_and_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.choice(UNSEEN, 300)
    scores = rng.random((300, C))
    scores[:, SEEN] += 10  # seen columns must be ignored by ZSL
    pred = np.array(UNSEEN)[scores[:, UNSEEN].argmax(1)]
    assert ev.zsl_top1(scores, y, UNSEEN) == pytest.approx(balanced_accuracy_score(y, pred) * 100)


def test_gzsl_matches_sklearn_and_harmonic_mean():
    rng = np.random.default_rng(4)
    ys, yu = rng.choice(SEEN, 400), rng.choice(UNSEEN, 300)
    ss, su = rng.random((400, C)), rng.random((300, C))
    r = ev.gzsl(ss, ys, su, yu, SEEN, UNSEEN, lam=0.1)
    ps = (ss - 0.1 * np.isin(np.arange(C), SEEN)).argmax(1)
    pu = (su - 0.1 * np.isin(np.arange(C), SEEN)).argmax(1)
    # per-class accuracy over the group's classes = recall per class, averaged (predictions over all classes)
    rec_s = [np.mean(ps[ys == c] == c) for c in SEEN]
    rec_u = [np.mean(pu[yu == c] == c) for c in UNSEEN]
    assert r["S"] == pytest.approx(np.mean(rec_s) * 100)
    assert r["U"] == pytest.approx(np.mean(rec_u) * 100)
    assert r["H"] == pytest.approx(2 * r["U"] * r["S"] / (r["U"] + r["S"]))


def test_lambda_search_finds_the_known_bias():
    """Scores rank the true class first within its group, but seen scores carry a bias of +0.6:
    every lambda in (0.3, 0.9) separates perfectly, and the search must land at the low end."""
    rng = np.random.default_rng(5)
    def make(n, classes):
        y = rng.choice(classes, n)
        s = rng.random((n, C)) * 0.2
        s[np.arange(n), y] += 0.5
        s[:, SEEN] += 0.6
        return s, y
    vs, vys = make(300, SEEN)
    vu, vyu = make(300, UNSEEN)
    grid = np.linspace(0, 1, 101)
    lam, val = ev.choose_lambda(vs, vys, vu, vyu, SEEN, UNSEEN, grid)
    assert val["H"] == pytest.approx(100.0)
    assert 0.15 <= lam <= 0.31  # the smallest perfect lambda (<= 0.3, more for easy samples)
    assert ev.gzsl(vs, vys, vu, vyu, SEEN, UNSEEN, 0.0)["U"] < 5  # uncalibrated: unseen never wins


def test_lambda_never_sees_test_data():
    rng = np.random.default_rng(6)
    val = [rng.random((50, C)), rng.choice(SEEN, 50), rng.random((50, C)), rng.choice(UNSEEN, 50)]
    test_a = [rng.random((80, C)), rng.choice(SEEN, 80), rng.random((80, C)), rng.choice(UNSEEN, 80)]
    test_b = [rng.random((80, C)), rng.choice(SEEN, 80), rng.random((80, C)), rng.choice(UNSEEN, 80)]
    grid = np.linspace(0, 1, 21)
    ra = ev.full_report(*test_a, *val, SEEN, UNSEEN, grid)
    rb = ev.full_report(*test_b, *val, SEEN, UNSEEN, grid)
    assert ra["calibration_lambda"] == rb["calibration_lambda"]


def test_ausuc_against_a_dense_lambda_sweep():
    rng = np.random.default_rng(7)
    ys, yu = rng.choice(SEEN, 200), rng.choice(UNSEEN, 150)
    ss, su = rng.random((200, C)), rng.random((150, C))
    ss[np.arange(200), ys] += 0.4
    su[np.arange(150), yu] += 0.4
    lams = np.linspace(-2, 2, 40001)
    us = np.array([ev.gzsl(ss, ys, su, yu, SEEN, UNSEEN, l)["U"] for l in lams[::100]])
    s_ = np.array([ev.gzsl(ss, ys, su, yu, SEEN, UNSEEN, l)["S"] for l in lams[::100]])
    u, s = ev.seen_unseen_curve(ss, ys, su, yu, SEEN, UNSEEN)
    assert u[0] == 0 and s[-1] == pytest.approx(0) and np.all(np.diff(u) >= 0) and np.all(np.diff(s) <= 1e-9)
    assert u[-1] == pytest.approx(us.max()) and s[0] == pytest.approx(s_.max())
    approx = np.trapezoid(s_, us) / 100
    assert ev.ausuc(ss, ys, su, yu, SEEN, UNSEEN) == pytest.approx(approx, abs=1.0)


def test_confusion_matches_sklearn():
    rng = np.random.default_rng(8)
    y, p = rng.integers(0, C, 200), rng.integers(0, C, 200)
    assert (ev.confusion(y, p, C) == confusion_matrix(y, p, labels=range(C))).all()
