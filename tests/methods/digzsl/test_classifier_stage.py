"""The classifier stage's Ray Data functions, without Ray: class balance and the synthetic filter."""

from __future__ import annotations

import numpy as np


def test_balance_replicates_rows_to_the_target_in_expectation():
    from digzsl_ray.methods.digzsl.stages.classifier import balance

    batch = {"label": np.array([0] * 10 + [1] * 40), "x": np.arange(50)}
    totals = {0: 0, 1: 0}
    for _ in range(200):
        out = balance(batch, {0: 2.5, 1: 0.5})
        for y in (0, 1):
            totals[y] += int((out["label"] == y).sum())
    assert abs(totals[0] / 200 - 25) < 1.5 and abs(totals[1] / 200 - 20) < 1.5


def test_keep_synthetic_filters_by_threshold_and_validation_side():
    from digzsl_ray.generation import is_validation_row
    from digzsl_ray.methods.digzsl.stages.classifier import keep_synthetic

    seeds = np.arange(200)
    batch = {"class_name": np.array(["a"] * 100 + ["b"] * 100), "cdm_score": np.linspace(0, 1, 200),
             "seed": seeds, "label": np.array([1] * 100 + [2] * 100)}
    train = keep_synthetic(batch, {"a": 0.25, "b": None}, 0.2, want_val=False)
    val = keep_synthetic(batch, {"a": 0.25, "b": None}, 0.2, want_val=True)
    assert not set(train["seed"]) & set(val["seed"])
    assert all(is_validation_row(int(s), 0.2) for s in val["seed"])
    kept_a = train["cdm_score"][train["class_name"] == "a"]
    assert (kept_a >= 0.25).all() and (train["class_name"] == "b").sum() > 60
