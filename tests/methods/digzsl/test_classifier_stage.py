"""The classifier stage's Ray Data functions, without Ray: class balance and the synthetic filter."""

from __future__ import annotations

import numpy as np


def test_balance_replicates_rows_to_the_target_afresh_each_epoch_and_repeats_itself():
    from digzsl_ray.methods.digzsl.stages.classifier import balance, keep_mask

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2000, 4, 4, 3), dtype=np.uint8)
    batch = {"label": np.array([0] * 400 + [1] * 1600), "image": images}
    factors = {0: 2.5, 1: 0.5}

    def epoch(out, e):
        m = keep_mask(out["keep_u"], out["keep_p"], e)
        return {k: v[m] for k, v in out.items()}

    out = balance(batch, factors, seed=3)
    kept = [epoch(out, e) for e in range(4)]
    for k in kept:  # in expectation 1000 and 800 rows
        assert abs(int((k["label"] == 0).sum()) - 1000) < 60 and abs(int((k["label"] == 1).sum()) - 800) < 60
    # each epoch draws afresh: class 1 does not train on the same half every epoch
    halves = [{im.tobytes() for im, y in zip(k["image"], k["label"]) if y == 1} for k in kept[:2]]
    assert len(halves[0] & halves[1]) < 0.75 * len(halves[0])
    # a pure function of pixels and seed: again, and in other blocks, the same copies and draws
    again = balance(batch, factors, seed=3)
    assert all(np.array_equal(out[k], again[k]) for k in out)
    parts = [balance({k: v[sl] for k, v in batch.items()}, factors, seed=3) for sl in (slice(1000, None), slice(0, 1000))]
    assert sorted(np.concatenate([p["keep_u"] for p in parts]).tolist()) == sorted(out["keep_u"].tolist())
    # other seeds: independent draws (keyed hashing, not an affine function of the seed)
    others = [epoch(balance(batch, factors, seed=s), 0) for s in (1, 2)]
    sets = [{im.tobytes() for im, y in zip(k["image"], k["label"]) if y == 1} for k in others]
    overlap = len(sets[0] & sets[1]) / max(1, len(sets[0]))
    assert 0.35 < overlap < 0.65  # about half, as for two independent halves


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
