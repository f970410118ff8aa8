"""The validation-class calibration: lambda from real pseudo-unseen images of held-out seen classes."""

from __future__ import annotations

import numpy as np


def _logits(labels: np.ndarray, n_classes: int, bias_cols: list[int], bias: float, rng) -> np.ndarray:
    """Logits that favour the true class by 3 and the ``bias_cols`` (the training classes) by ``bias``."""
    z = rng.normal(0.0, 1.0, size=(len(labels), n_classes))
    z[np.arange(len(labels)), labels] += 3.0
    z[:, bias_cols] += bias
    return z


def test_valclass_lambda_is_chosen_on_pseudo_unseen_real_images(tmp_path):
    from digzsl_ray.methods.digzsl.stages.evaluate import valclass_lambda

    rng = np.random.default_rng(0)
    n = 12
    seen, unseen, vcls = list(range(8)), [8, 9, 10, 11], [6, 7]
    pseudo_seen = [c for c in seen if c not in vcls]
    ys = np.repeat(pseudo_seen, 30)
    yu = np.repeat(vcls, 30)
    arrays = {"valclass_seen_scores": _logits(ys, n, pseudo_seen, 2.5, rng), "valclass_seen_labels": ys,
              "valclass_unseen_scores": _logits(yu, n, pseudo_seen, 2.5, rng), "valclass_unseen_labels": yu,
              "valclass_classes": np.array(vcls)}
    np.savez(tmp_path / "s.npz", **arrays)
    grid = np.linspace(0, 1, 101)
    lam, val = valclass_lambda(np.load(tmp_path / "s.npz"), seen, unseen, grid)
    # a seen-class bias of 2.5 logits calls for calibration; it lifts pseudo-unseen accuracy far above 0
    assert lam > 0.1 and val["U"] > 40 and val["S"] > 40
    # without those arrays (an older CDM stage) there is no such calibration
    np.savez(tmp_path / "old.npz", val_scores=np.zeros((1, n)))
    assert valclass_lambda(np.load(tmp_path / "old.npz"), seen, unseen, grid) is None


def test_validation_classes_come_from_the_dataset_or_a_seeded_draw():
    from digzsl_ray.data.split import ZSLSplit
    from digzsl_ray.data.split import validation_classes

    listed = ZSLSplit("x", [str(i) for i in range(10)], list(range(7)), [7, 8, 9], {}, val_classes=[5, 2])
    assert validation_classes(listed, 0) == [2, 5]
    drawn = ZSLSplit("x", [str(i) for i in range(10)], list(range(7)), [7, 8, 9], {})
    a, b = validation_classes(drawn, 0), validation_classes(drawn, 0)
    assert a == b and len(a) == 1 and set(a) <= set(drawn.seen)
    assert validation_classes(ZSLSplit("x", ["a", "b"], [0], [1], {}), 0) == []  # never every seen class


def test_check_targets_name_value_target_and_verdict():
    from digzsl_ray.miniworld.check import targets

    check = {"clip_zero_shot_top1": 58.0, "sd_common_class_oracle_acc": 90.0, "sd_rare_class_oracle_acc": 85.0,
             "sd_unseen_class_oracle_acc": 70.0, "oracle_acc": 99.0, "vae_recon_oracle_acc_min_attribute": 96.0}
    t = targets(check, {"no_synthetic_zsl_top1": 81.0, "no_synthetic_uncalibrated_S_minus_U": 30.0,
                        "demo_pipeline_minutes": 12.0, "demo_peak_memory_gb": 6.0})
    assert t["clip_zero_shot_top1"] == {"value": 58.0, "target": "45..70", "ok": True}
    assert t["sd_common_minus_rare"]["ok"] is False  # 5 points apart, 10 wanted
    assert t["no_synthetic_zsl_top1"]["ok"] is False and t["demo_peak_memory_gb"]["ok"] is True
    assert set(targets(check)) == {"clip_zero_shot_top1", "sd_common_minus_rare", "sd_unseen_class_oracle_acc",
                                   "oracle_acc", "vae_recon_oracle_acc_min_attribute"}
