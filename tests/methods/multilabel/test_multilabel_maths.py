"""Diff-ZS-MLC maths without Ray: grouping softmax, the two filters, ASL, label-set sampling."""

import numpy as np
import pytest
import torch

from digzsl_ray.methods.multilabel.discriminator import filter_exact, filter_topk_extra, grouping_softmax
from digzsl_ray.methods.multilabel.losses import asymmetric_loss
from digzsl_ray.methods.multilabel.sampling import COCO_CONFUSIONS, LabelSetSampler


def _reference_grouping(logits, targets):
    """ClipPipeline.forward, restated with loops: per target p a softmax over {p} + non-targets."""
    prob = np.zeros(len(logits))
    neg = [i for i in range(len(logits)) if i not in targets]
    for p in targets:
        idx = [p] + neg
        e = np.exp(logits[idx] - logits[idx].max())
        sm = e / e.sum()
        prob[p] = sm[0]
        for j, n in enumerate(neg, start=1):
            prob[n] += sm[j] / len(targets)
    return prob


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouping_softmax_matches_the_reference_loops(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(5, 9)) * 4
    targets = np.zeros((5, 9), dtype=bool)
    for b in range(5):
        targets[b, rng.choice(9, size=b % 3 + 1, replace=False)] = True
    got = grouping_softmax(torch.tensor(logits), torch.tensor(targets)).numpy()
    want = np.stack([_reference_grouping(logits[b], list(np.flatnonzero(targets[b]))) for b in range(5)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # each group is a distribution: target shares + |T| x (non-target mass) = |T|
    np.testing.assert_allclose((got * targets).sum(1) + targets.sum(1) * (got * ~targets).sum(1),
                               targets.sum(1), rtol=1e-10)


def test_grouping_softmax_mass_and_gradient():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]], requires_grad=True)
    targets = torch.tensor([[True, False, False, True]])
    prob = grouping_softmax(logits, targets)
    # each group (target + all non-targets) is a distribution: targets' shares + |T| * non-target mass = |T|
    assert float((prob[0, [0, 3]].sum() + 2 * prob[0, [1, 2]].sum()).detach()) == pytest.approx(2.0)
    prob[0, 0].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="at least one target"):
        grouping_softmax(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool))


def test_exact_filter_coco_rule():
    names = ["bus", "dog", "cow", "cat"]
    d = filter_exact(torch.tensor([0.9, 0.7, 0.2, 0.1]), [0, 1])
    assert d.accepted and d.labels == [0, 1]
    assert d.row(names)["target_labels"] == ["bus", "dog"] and d.row(names)["accepted"]
    d = filter_exact(torch.tensor([0.9, 0.4, 0.2, 0.1]), [0, 1])  # dog below 0.5
    assert not d.accepted and "targets [1]" in d.reason and d.labels == []
    d = filter_exact(torch.tensor([0.9, 0.2, 0.8, 0.1]), [0, 1])  # cow beats dog into the top-2
    assert not d.accepted


def test_topk_extra_filter_nus_rule_adds_confident_extras_and_parents():
    p = torch.tensor([0.8, 0.05, 0.3, 0.6, 0.02, 0.01, 0.0, 0.0, 0.0])
    d = filter_topk_extra(p, [0, 3], k=3, extra_threshold=0.1, parents={3: [8]})
    assert d.accepted and d.added == [2, 8] and d.labels == [0, 2, 3, 8]
    d = filter_topk_extra(p, [0, 4], k=3)
    assert not d.accepted and "targets [4]" in d.reason


def test_asymmetric_loss_hand_worked():
    prob = torch.tensor([[0.8, 0.3, 0.04]])
    y = torch.tensor([[1, 0, 0]])
    # pos: -log 0.8 (gamma_pos 0); neg 0.3: p_m = 0.25 -> -log(0.75) * 0.25^4; neg 0.04: p_m = 0 -> 0
    want = -np.log(0.8) - np.log(0.75) * 0.25 ** 4
    assert float(asymmetric_loss(prob, y)) == pytest.approx(want, rel=1e-6)
    assert float(asymmetric_loss(prob, y, gamma_neg=2, gamma_pos=1)) == pytest.approx(
        -np.log(0.8) * 0.2 - np.log(0.75) * 0.25 ** 2, rel=1e-6)
    # the focusing weights carry no gradient (the references' disable_torch_grad_focal_loss=True):
    # d/dp of -log(1 - p_m) w_neg at p = 0.3 is w_neg / (1 - p_m) = 0.25^2 / 0.75 (with the weight's own
    # gradient it would add -log(0.75) * 2 * 0.25 = 0.144, about 3x more); positive: -w_pos / p = -0.2 / 0.8
    p = prob.clone().requires_grad_(True)
    asymmetric_loss(p, y, gamma_neg=2, gamma_pos=1).backward()
    assert p.grad[0, 1].item() == pytest.approx(0.25 ** 2 / 0.75, rel=1e-5)
    assert p.grad[0, 0].item() == pytest.approx(-0.2 / 0.8, rel=1e-5)
    assert p.grad[0, 2].item() == 0.0


def test_label_set_sampler_quota_redraws_and_confusions():
    labels = ["skateboard", "snowboard", "cow", "elephant", "bus", "cup", "sink"]
    s = LabelSetSampler(labels, quota=5, confusions=COCO_CONFUSIONS[:3], seed=0)
    drawn = []
    while not s.done():
        t = s.draw()
        drawn.append(t)
        s.accept(t)
    assert all(len(t) == 2 for t in drawn[:-3])  # pairs, except possibly at the very end (one label left)
    assert not any({0, 1} <= set(t) or {2, 3} <= set(t) or {5, 6} <= set(t) for t in drawn if len(t) == 2)
    assert (s.counts >= 5).all() and s.draw() is None
    a, b = LabelSetSampler(labels, seed=3), LabelSetSampler(labels, seed=3)
    assert [a.draw() for _ in range(20)] == [b.draw() for _ in range(20)]
    nus = LabelSetSampler(labels, quota=50, redraw_single=False, seed=1)
    assert any(len(nus.draw()) == 1 for _ in range(200))  # NUS rule: single-label sets occur
    with pytest.raises(ValueError, match="not sampled"):
        LabelSetSampler(["bus"], confusions=COCO_CONFUSIONS)


def test_mcnemar_exact_hand_cases():
    from digzsl_ray.metrics.multilabel import mcnemar

    a = np.array([1, 1, 1, 0, 0, 1, 0, 0], bool)
    b = np.array([1, 0, 0, 0, 1, 1, 0, 0], bool)
    m = mcnemar(a, b)  # discordant: a only 2, b only 1 -> p = 2 * (C(3,0) + C(3,1)) / 8 = 1.0
    assert (m["both"], m["neither"], m["a_only"], m["b_only"], m["p_value"]) == (2, 3, 2, 1, 1.0)
    m = mcnemar(np.ones(10, bool), np.zeros(10, bool))  # 10 against 0: p = 2 / 1024
    assert m["p_value"] == pytest.approx(2 / 1024, abs=1e-6)
    assert mcnemar(np.zeros(3, bool), np.zeros(3, bool))["p_value"] == 1.0

