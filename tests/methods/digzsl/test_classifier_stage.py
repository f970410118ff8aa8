"""The classifier stage's Ray Data functions, without Ray: class balance and the synthetic filter."""

from __future__ import annotations

import numpy as np


def test_balance_replicates_rows_to_the_target_and_repeats_itself():
    from digzsl_ray.methods.digzsl.stages.classifier import balance

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2000, 4, 4, 3), dtype=np.uint8)
    batch = {"label": np.array([0] * 400 + [1] * 1600), "image": images}
    out = balance(batch, {0: 2.5, 1: 0.5}, seed=3)
    # in expectation 1000 and 800 rows; the draw is a function of pixels and seed only
    assert abs(int((out["label"] == 0).sum()) - 1000) < 60 and abs(int((out["label"] == 1).sum()) - 800) < 60
    again = balance(batch, {0: 2.5, 1: 0.5}, seed=3)
    assert np.array_equal(out["image"], again["image"])
    # the same rows in other blocks (other batch boundaries, other order) get the same replication
    halves = [balance({k: v[sl] for k, v in batch.items()}, {0: 2.5, 1: 0.5}, seed=3)
              for sl in (slice(1000, None), slice(0, 1000))]
    assert sum(len(h["label"]) for h in halves) == len(out["label"])
    other = balance(batch, {0: 2.5, 1: 0.5}, seed=4)
    assert not np.array_equal(other["image"], out["image"])  # another seed, another draw


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
