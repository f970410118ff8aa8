"""The classifier head on cached features (methods/digzsl/head.py), without Ray."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from digzsl_ray.classifier import PrototypeHead
from digzsl_ray.features import zero_shot_logits
from digzsl_ray.methods.digzsl.head import (
    balanced_rows,
    class_factors,
    distill_loss,
    head_logits,
    train_epoch,
    train_head,
    validate,
)


def _blobs(n_per_class: int, centres: torch.Tensor, noise: float, seed: int, views: int = 2):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(centres)).repeat_interleave(n_per_class)
    f = centres[y].unsqueeze(0) + noise * torch.randn(views, len(y), centres.shape[1], generator=g)
    return f, y


def test_balanced_rows_give_every_class_the_mean_count_in_expectation():
    labels = torch.tensor([0] * 10 + [1] * 90)
    f = class_factors(labels)
    assert f == {0: 5.0, 1: 50 / 90}
    g = torch.Generator().manual_seed(0)
    counts = np.zeros(2)
    for _ in range(200):
        rows = balanced_rows(labels, f, g)
        counts += np.bincount(labels[rows].numpy(), minlength=2)
    assert np.allclose(counts / 200, [50, 50], atol=1.5)
    # class 0 is replicated five times exactly, class 1 subsampled afresh each draw
    r1, r2 = balanced_rows(labels, f, g), balanced_rows(labels, f, g)
    assert (labels[r1] == 0).sum() == 50 and set(r1[labels[r1] == 1].tolist()) != set(r2[labels[r2] == 1].tolist())


def test_distill_loss_is_zero_at_the_teacher_and_positive_elsewhere():
    t = torch.randn(8, 5)
    assert float(distill_loss(t.clone(), t, 2.0)) < 1e-6
    assert float(distill_loss(torch.randn(8, 5), t, 2.0)) > 0.01


def test_prototype_head_at_clip_scale_is_clip_zero_shot():
    protos = F.normalize(torch.randn(6, 16), dim=-1)
    feats = torch.randn(20, 16)
    head = PrototypeHead(protos, scale=16.8)
    z = zero_shot_logits(feats, protos, 16.8)
    assert np.allclose(head_logits(head, feats).detach().numpy(), z, atol=1e-4)


def test_rows_fixes_the_number_of_rows_an_epoch_steps_over():
    protos = F.normalize(torch.randn(3, 8), dim=-1)
    f, y = _blobs(10, protos, 0.1, 0)
    head = PrototypeHead(protos)
    opt = torch.optim.SGD(head.parameters(), lr=0.0)
    _, n = train_epoch(head, f, y, class_factors(y), opt, 7, torch.Generator().manual_seed(0), rows=41)
    assert n == 41


def test_training_learns_a_class_the_prototypes_get_wrong_and_distillation_holds_the_rest():
    torch.manual_seed(0)
    protos = F.normalize(torch.randn(4, 16), dim=-1)
    # class 3's images lie near class 2's prototype: zero-shot gets class 3 wrong
    centres = protos.clone()
    centres[3] = F.normalize(protos[2] + 0.3 * protos[3], dim=-1)
    f, y = _blobs(30, centres, 0.05, 1)
    fv, yv = _blobs(10, centres, 0.05, 2, views=1)
    head = PrototypeHead(protos, scale=16.0)
    before, _ = validate(head, fv[0], yv.numpy())
    info = train_head(head, f, y, fv[0], yv.numpy(), epochs=30, patience=30, lr=5e-2, weight_decay=0.0, batch=32,
                      seed=0)
    after, p = validate(head, fv[0], yv.numpy())
    assert before <= 80.0 and after == 100.0 and info["best_epoch"] >= 0 and p.shape == (40, 4)


def test_the_initial_head_wins_selection_when_training_makes_validation_worse():
    protos = F.normalize(torch.randn(3, 8), dim=-1)
    f, y = _blobs(20, protos, 0.05, 0)
    y_wrong = (y + 1) % 3  # training labels that contradict the validation images
    fv, yv = _blobs(10, protos, 0.05, 1, views=1)
    head = PrototypeHead(protos, scale=16.0)
    init = {k: v.clone() for k, v in head.state_dict().items()}
    info = train_head(head, f, y_wrong, fv[0], yv.numpy(), epochs=5, patience=5, lr=0.1, weight_decay=0.0, batch=16,
                      seed=0, init_candidate=True)
    assert info["best_epoch"] == -1 and info["history"][0] == {"epoch": -1, "val_acc": 100.0}
    assert all(torch.equal(init[k], v) for k, v in head.state_dict().items())
    # without the candidate, the same run keeps a trained (worse) epoch
    head2 = PrototypeHead(protos, scale=16.0)
    info2 = train_head(head2, f, y_wrong, fv[0], yv.numpy(), epochs=5, patience=5, lr=0.1, weight_decay=0.0,
                       batch=16, seed=0)
    assert info2["best_epoch"] >= 0 and info2["best_val_acc"] < 100.0
