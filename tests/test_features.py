"""Cached frozen-CLIP features, the zero-shot logits and the CLIP filter (digzsl_ray/features.py)."""

from __future__ import annotations

import numpy as np
import torch

from digzsl_ray.features import FeatureCache, clip_filter, images_key, softmax, zero_shot_logits


def test_cache_computes_once_and_recomputes_a_damaged_file(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).view(1, 2, 3)

    cache = FeatureCache(tmp_path / "f")
    key = cache.key(("clip", ""), 32, images_key(paths=["a.png", "b.png"]), 3, 0)
    assert torch.equal(cache.get(key, compute), cache.get(key, compute)) and len(calls) == 1
    (tmp_path / "f" / f"{key}.safetensors").write_bytes(b"garbage")
    assert torch.equal(cache.get(key, compute), torch.arange(6.0).view(1, 2, 3)) and len(calls) == 2
    # any change of images, views, seed, size or model is another key
    others = {cache.key(("clip", ""), 32, images_key(paths=["a.png"]), 3, 0), cache.key(("clip", ""), 32, "x", 1, 0),
              cache.key(("clip", ""), 32, "x", 3, 1), cache.key(("clip", ""), 64, "x", 3, 0),
              cache.key(("other", ""), 32, "x", 3, 0), key}
    assert len(others) == 6
    assert images_key(blobs=[b"1", b"2"]) != images_key(blobs=[b"2", b"1"])
    assert FeatureCache(None).get("k", compute).shape == (1, 2, 3)  # no root: nothing cached


def test_zero_shot_logits_are_scaled_cosines():
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = zero_shot_logits(np.array([[3.0, 0.0], [1.0, 1.0]]), protos, 10.0)
    assert np.allclose(z, [[10.0, 0.0], [10 / np.sqrt(2), 10 / np.sqrt(2)]], atol=1e-5)
    assert zero_shot_logits(np.zeros((0, 2)), protos, 10.0).shape == (0, 2)
    assert np.allclose(softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])


def test_clip_filter_keeps_images_whose_own_class_beats_chance_among_the_columns():
    # columns 1, 2, 3 (the unseen classes); chance is 1/3
    logits = np.log(np.array([[9.0, 0.5, 0.25, 0.25],    # label 1: p(1) = 0.5 -> kept
                              [9.0, 0.3, 0.4, 0.3],      # label 1: p(1) = 0.3 -> dropped
                              [0.0, 0.2, 0.2, 0.6]]) + 1e-12)  # label 3: p(3) = 0.6 -> kept
    keep = clip_filter(logits, np.array([1, 1, 3]), [1, 2, 3])
    assert keep.tolist() == [True, False, True]
    assert clip_filter(logits[:0], np.zeros(0, dtype=int), [1, 2, 3]).shape == (0,)
