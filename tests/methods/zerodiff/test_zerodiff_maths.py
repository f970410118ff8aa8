"""ZeroDiff's maths without Ray: schedule, penalties, mutual learning, SupCon, scaling, generators,
DiffGen/DiffTTA (ours), pseudo-labels, the masked softmax classifier, folds, semantics, res101.mat."""

from __future__ import annotations

import math
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from digzsl_ray.methods.zerodiff.config import ZerodiffRunConfig


def test_vp_schedule_matches_the_reference_values():
    from digzsl_ray.methods.zerodiff.schedule import vp_schedule

    s = vp_schedule(4, 0.1, 20.0)
    assert np.allclose(s.a_s_cum.numpy(), [1, .722, .281, .059, .007], atol=2e-3)
    assert np.allclose(s.sigmas_cum.numpy(), [0, .692, .960, .998, 1.0], atol=2e-3)
    assert np.allclose((s.sigmas ** 2).numpy(), [0, .478, .849, .956, .987], atol=2e-3)


def test_q_sample_pairs_has_the_schedule_variances_and_posterior_is_exact_at_zero():
    from digzsl_ray.methods.zerodiff.schedule import q_sample_pairs, sample_posterior, vp_schedule

    s = vp_schedule()
    torch.manual_seed(0)
    x0 = torch.full((20000, 4), 0.5)
    t = torch.full((20000,), 1)
    x_t, x_tp1 = q_sample_pairs(s, x0, t)
    assert abs(float(x_t.mean()) - 0.5 * float(s.a_s_cum[1])) < 0.02
    assert abs(float(x_t.std()) - float(s.sigmas_cum[1])) < 0.02
    # x_{t+1} = sqrt(1-b) x_t + sqrt(b) eps: its total variance is 1 - alpha_bar_{t+1}
    assert abs(float(x_tp1.std()) - float(s.sigmas_cum[2])) < 0.02
    z = torch.zeros(3, 4)
    a = sample_posterior(s, z + 1, z, torch.zeros(3, dtype=torch.long))
    b = sample_posterior(s, z + 1, z, torch.zeros(3, dtype=torch.long))
    assert torch.equal(a, b)  # no noise at t = 0
    assert torch.allclose(a, s.post_coef1[0] * (z + 1))


def test_gradient_penalty_of_linear_critics():
    from digzsl_ray.methods.zerodiff.gan import gradient_penalty

    for scale, want in ((1.0, 0.0), (2.0, 1.0), (3.0, 4.0)):
        w = torch.tensor([0.6, 0.8]) * scale
        crit = lambda x, a: (x * w).sum(1) + a.sum(1)  # noqa: E731
        real, fake, a = torch.randn(8, 2), torch.randn(8, 2), torch.randn(8, 3)
        assert float(gradient_penalty(crit, [real, a], [fake, a])) == pytest.approx(want, abs=1e-5)


def test_mutual_learning_and_adaptive_lambda_hand_cases():
    from digzsl_ray.methods.zerodiff.gan import DFG_PAIRS, adapt_lambda, mutual_learning

    w = {"x0": torch.tensor([1.0, 2.0]), "xt": torch.tensor([0.0, 2.0]), "xc": torch.tensor([1.0, 0.0])}
    f = torch.tensor([0.5, 1.0])
    # sample 0: f(1 + 1 + 1 + 1) + 0 + 0 = 2; sample 1: f(0 + 0 + 4 + 4) + 4 + 4 = 16 -> mean 9
    assert float(mutual_learning(w, f, DFG_PAIRS)) == pytest.approx(9.0)
    x0 = w["x0"].clone().requires_grad_(True)
    mutual_learning({**w, "x0": x0}, f, DFG_PAIRS).backward()
    assert x0.grad is not None and w["xt"].grad is None  # the targets are stop-gradient
    assert adapt_lambda(10.0, 1.2) == pytest.approx(11.0)
    assert adapt_lambda(10.0, 0.5) == pytest.approx(10.0 / 1.1)
    assert adapt_lambda(10.0, 1.02) == 10.0


def test_weighted_l1_and_supcon_hand_cases():
    from digzsl_ray.methods.zerodiff.nets import weighted_l1
    from digzsl_ray.methods.zerodiff.represent import supcon_loss

    # the reference's form (tfvaegan): w = e^2 / sqrt(sum e^2), loss = sum(w |e|) / rows
    pred, tgt = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # row 0: e (1, 0), w (1, 0) -> 1; row 1: e (0, -2), w (0, 4 / 2) -> 4; mean over rows 2.5 (1.5 without the sqrt)
    assert float(weighted_l1(pred, tgt)) == pytest.approx(2.5)
    # e (3, 4): w (9, 16) / 5, sum w |e| = (27 + 64) / 5 = 18.2 (3.64 without the sqrt)
    assert float(weighted_l1(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2))) == pytest.approx(18.2)
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert float(supcon_loss(z, y, 1.0)) == pytest.approx(math.log(math.e + 2) - 1, abs=1e-6)
    assert float(supcon_loss(z, torch.tensor([0, 1, 0, 1]), 1.0)) > float(supcon_loss(z, y, 1.0))
    assert float(supcon_loss(z, torch.tensor([0, 1, 2, 3]), 1.0)) == 0.0  # no positives


def test_minmax_is_fit_on_train_only():
    from digzsl_ray.methods.zerodiff.represent import MinMax

    tr = np.array([[0.0, 10.0], [2.0, 20.0]])
    m = MinMax(tr)
    assert m(tr).min() == 0.0 and m(tr).max() == 1.0
    assert m(np.array([[4.0, 30.0]])).tolist() == [[2.0, 2.0]]  # test values may leave [0, 1]


def test_generator_weights_come_from_their_own_seeds_only():
    """Initial weights and training depend on drg.seed / dfg.seed, not on what the process drew before;
    drg.seed moves the DRG and only it."""
    from digzsl_ray.methods.zerodiff.models import build_gans, phase_seeds
    from digzsl_ray.methods.zerodiff.nets import V2S

    small = {"hidden": 8, "critic_hidden": 8, "batch_size": 4, "critic_iter": 1}
    cfg = ZerodiffRunConfig().model_copy(update={"drg": ZerodiffRunConfig().drg.model_copy(update=small),
                                                 "dfg": ZerodiffRunConfig().dfg.model_copy(update=small)})
    p = NS(att=np.eye(3, dtype=np.float32), x={"train": np.zeros((1, 6), np.float32)},
           r={"train": np.zeros((1, 5), np.float32)})
    x, y, r, att = torch.rand(12, 6), torch.arange(12) % 3, torch.rand(12, 5), torch.eye(3)

    def trained(c, fold_index: int, noise: int):
        torch.rand(noise)  # whatever the process drew before
        drg, dfg = build_gans(c, p, "cpu", fold_index)
        out = {}
        for name, model, sec, data in (("drg", drg, c.drg, r), ("dfg", dfg, c.dfg, x)):
            gs, ts = phase_seeds(sec, fold_index)
            torch.manual_seed(ts)
            model.train_epoch(data, y, att, None if name == "drg" else r, torch.Generator().manual_seed(gs))
            out[name] = model.weights()
        return out

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    one, two = trained(cfg, 1, 3), trained(cfg, 1, 1000)
    assert same(one["drg"], two["drg"]) and same(one["dfg"], two["dfg"])
    other = trained(cfg.model_copy(update={"drg": cfg.drg.model_copy(update={"seed": cfg.drg.seed + 1})}), 1, 3)
    assert not same(one["drg"], other["drg"]) and same(one["dfg"], other["dfg"])
    assert not same(one["drg"], trained(cfg, 0, 3)["drg"])  # the folds differ
    v = V2S(6, 3, 8, normalise=True)
    assert torch.allclose(v(torch.rand(4, 6))[0].norm(dim=1), torch.ones(4))


def _gan_cfg(**kw):
    c = ZerodiffRunConfig().dfg.model_copy(update={"hidden": 64, "critic_hidden": 64, "batch_size": 32,
                                                   "critic_iter": 2, **kw})
    return c


def test_dfg_learns_class_conditional_features_and_checkpoints_exactly():
    from digzsl_ray.methods.zerodiff.gan import DFG

    torch.manual_seed(0)
    n = 256
    y = torch.arange(n) % 2
    centres = torch.tensor([[0.2] * 4 + [0.8] * 4, [0.8] * 4 + [0.2] * 4])
    x = (centres[y] + 0.05 * torch.randn(n, 8)).clamp(0, 1)
    r = x[:, :4].clone()
    att = torch.eye(2)
    d = DFG(2, 8, 4, _gan_cfg(lr=2e-3), "cpu")
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        m = d.train_epoch(x, y, att, r, gen)
    assert set(m) >= {"loss_d", "loss_g", "wasserstein", "lambda_gp"}
    ys = torch.tensor([0] * 50 + [1] * 50)
    out = d.sample(att[ys], centres[ys][:, :4], gen=torch.Generator().manual_seed(1))
    pred = ((out[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    assert float((pred == ys).float().mean()) > 0.9
    # state round trip: the same weights give the same samples
    e = DFG(2, 8, 4, _gan_cfg(lr=2e-3), "cpu")
    e.load_state_dict(d.state_dict())
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(d.sample(att[ys], r[:100], gen=g1), e.sample(att[ys], r[:100], gen=g2))
    f = DFG(2, 8, 4, _gan_cfg(), "cpu")
    f.load_weights(d.weights())
    assert torch.equal(d.sample(att[ys], r[:100], gen=torch.Generator().manual_seed(4)),
                       f.sample(att[ys], r[:100], gen=torch.Generator().manual_seed(4)))


def test_drg_and_progressive_and_diffgen_shapes():
    from digzsl_ray.methods.zerodiff.gan import DFG, DRG
    from digzsl_ray.methods.zerodiff.transduct import diffgen, difftta

    cfg = ZerodiffRunConfig()
    drg = DRG(3, 5, cfg.drg.model_copy(update={"hidden": 16, "critic_hidden": 16, "batch_size": 8, "critic_iter": 1}))
    dfg = DFG(3, 6, 5, _gan_cfg(batch_size=8, critic_iter=1))
    att = torch.eye(3)
    x, y, r = torch.rand(16, 6), torch.arange(16) % 3, torch.rand(16, 5)
    gen = torch.Generator().manual_seed(0)
    drg.train_epoch(r, y, att, None, gen)
    dfg.train_epoch(x, y, att, r, gen)
    rh = drg.sample(att[y])
    assert rh.shape == (16, 5) and float(rh.min()) >= 0 and float(rh.max()) <= 1
    assert dfg.sample(att[y], rh, progressive=True).shape == (16, 6)
    gx, gy, gr = diffgen(dfg, drg, x.numpy()[:4], np.array([0, 1, 2, 0]), att, 1, 3, 0)
    assert gx.shape == (12, 6) and gy.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0]
    # conditioned on r_hat drawn by the DRG for the pseudo-label (one per copy), never the feature's own r
    assert gr.shape == (12, 5) and not np.allclose(gr[0], gr[1])
    assert np.allclose(gr, drg.sample(att[torch.from_numpy(gy)], gen=torch.Generator().manual_seed(0)).numpy())
    again = diffgen(dfg, drg, x.numpy()[:4], np.array([0, 1, 2, 0]), att, 1, 3, 0)
    assert np.array_equal(gx, again[0])  # seeded, including the posterior's noise
    adapted, curve = difftta(dfg, x.numpy(), r.numpy(), y.numpy(), att, 5, 1e-3, 8, 0)
    assert len(curve) == 5 and adapted is not dfg
    assert any(not torch.equal(a, b) for a, b in zip(adapted.G.parameters(), dfg.G.parameters()))


def test_validation_halves_are_disjoint_per_class_and_seeded():
    from digzsl_ray.methods.zerodiff.evaluate import validation_halves

    y = {"test_seen": np.repeat([0, 1, 2], 6), "test_unseen": np.repeat([3, 4], 7)}
    h = validation_halves(y, 0)
    for k in y:
        pool, score = h["pool"][k], h["score"][k]
        assert not set(pool) & set(score) and sorted(np.concatenate([pool, score])) == list(range(len(y[k])))
        for c in np.unique(y[k]):  # each class in both halves
            assert (y[k][pool] == c).sum() == (y[k] == c).sum() // 2 and (y[k][score] == c).any()
    assert np.array_equal(h["pool"]["test_unseen"], validation_halves(y, 0)["pool"]["test_unseen"])
    assert not np.array_equal(h["pool"]["test_unseen"], validation_halves(y, 1)["pool"]["test_unseen"])


def test_pseudo_labels_of_the_validation_fold_come_from_its_pool_half_only():
    from digzsl_ray.methods.zerodiff.evaluate import validation_halves
    from digzsl_ray.methods.zerodiff.stages.evaluate import _pseudo

    y = {"test_seen": np.repeat([0, 1], 4), "test_unseen": np.repeat([2, 3], 4)}
    probs = np.full((16, 4), 0.01)
    probs[np.arange(16), np.concatenate([y["test_seen"][:4] * 0 + 2, y["test_seen"][4:] * 0 + 3, y["test_unseen"]])] = 0.97
    p = NS(y=y, fold=NS(seen=[0, 1], unseen=[2, 3]))
    fit = {"probs": [{"test_seen": probs[:8], "test_unseen": probs[8:]}]}
    halves = validation_halves(y, 0)
    rows, labels, info = _pseudo(fit, {"epoch": 0, "lambda": 0.0}, p, 0.5, 100, halves)
    allowed = set(halves["pool"]["test_seen"]) | {8 + i for i in halves["pool"]["test_unseen"]}
    assert len(rows) == 8 and set(rows) <= allowed  # every seen image here looks unseen: half of them taken
    assert info["from_test_seen"] == 50.0 and info["accuracy_measured"] == 50.0
    rows, _, info = _pseudo(fit, {"epoch": 0, "lambda": 0.0}, p, 0.5, 100, None)
    assert len(rows) == 16 and info["n"] == 16


def test_pseudo_labels_threshold_cap_and_calibration():
    from digzsl_ray.methods.zerodiff.transduct import pseudo_labels

    probs = np.array([[0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.2, 0.1, 0.7], [0.9, 0.05, 0.05], [0.45, 0.55, 0.0]])
    # confidence = probability among the unseen classes: rows 0, 1, 4 -> class 1 (.89, .86, 1.0), row 2 -> 2 (.875)
    rows, labels = pseudo_labels(probs, seen=[0], unseen=[1, 2], lam=0.0, threshold=0.87, per_class=2)
    assert rows.tolist() == [4, 0, 2] and labels.tolist() == [1, 1, 2]
    rows, _ = pseudo_labels(probs, seen=[0], unseen=[1, 2], lam=0.0, threshold=0.5, per_class=1)
    assert rows.tolist() == [4, 2]  # the most confident per class
    rows, labels = pseudo_labels(probs, seen=[0], unseen=[1, 2], lam=0.9, threshold=0.0, per_class=10)
    assert 3 in rows.tolist()  # calibration moves the seen-looking row to an unseen class


def test_softmax_classifier_masks_classes_outside_the_fold():
    from digzsl_ray.metrics.zsl import calibrate
    from digzsl_ray.methods.zerodiff.classify import fit_softmax

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.repeat([0, 2], 30)
    x[y == 2] += 3
    c = NS(epochs=3, batch_size=16, lr=1e-2)
    probs, states = fit_softmax(x, y, 4, {"t": x}, c, 0, columns=[0, 2])
    assert len(probs) == 3 and len(states) == 3 and states[0]["weight"].shape == (4, 4)
    p = probs[-1]["t"]
    assert np.isneginf(p[:, [1, 3]]).all()
    assert np.allclose(p[:, [0, 2]].sum(1), 1.0, atol=1e-5)
    assert set(calibrate(p, [0], 1.0).argmax(1)) <= {0, 2}  # masked columns never win


def _toy_split():
    from digzsl_ray.data.split import Item, ZSLSplit

    items = {"trainval": [Item(f"/tv/{c}_{i}.png", (c,)) for c in range(4) for i in range(10)],
             "test_seen": [Item(f"/ts/{c}_{i}.png", (c,)) for c in range(4) for i in range(2)],
             "test_unseen": [Item(f"/tu/{c}_{i}.png", (c,)) for c in (4, 5) for i in range(3)]}
    s = ZSLSplit("toy", [f"c{i}" for i in range(6)], [0, 1, 2, 3], [4, 5], items, val_classes=[3])
    s.carve_val(0.2, 0)
    return s


def test_folds_hold_out_validation_classes_and_thin_training_rows():
    from digzsl_ray.methods.zerodiff.folds import build_folds

    split = _toy_split()
    feats = {k: (np.arange(len(v), dtype=np.float32)[:, None] + 0, np.array([it.label for it in v]))
             for k, v in split.items.items()}
    cfg = ZerodiffRunConfig()
    f = build_folds(cfg, split, feats)
    assert f["final"].seen == [0, 1, 2, 3] and f["final"].unseen == [4, 5]
    assert len(f["final"].y["train"]) == 32 and len(f["final"].y["heldout"]) == 8
    v = f["val"]
    assert v.seen == [0, 1, 2] and v.unseen == [3]
    assert 3 not in v.y["train"] and set(v.y["test_unseen"]) == {3} and len(v.y["test_unseen"]) == 10
    assert 3 not in v.y["test_seen"]
    held = {float(a) for a in f["final"].x["heldout"][:, 0]}
    assert not held & {float(a) for a in f["final"].x["train"][:, 0]}
    cfg.features.train_fraction = 0.25
    g = build_folds(cfg, split, feats)
    assert [int((g["final"].y["train"] == c).sum()) for c in range(4)] == [2, 2, 2, 2]
    assert len(g["final"].y["heldout"]) == 8  # held-out rows are never thinned


def test_miniworld_attribute_semantics(tmp_path):
    import json

    from digzsl_ray.methods.zerodiff.semantics import SemanticsError, miniworld_attributes

    (tmp_path / "dataset.json").write_text(json.dumps({"attributes": {
        "a": {"colour": "red", "shape": "circle"}, "b": {"colour": "blue", "shape": "circle"}}}))
    a = miniworld_attributes(tmp_path / "dataset.json", ["b", "a"])
    assert a.tolist() == [[1, 0, 1], [0, 1, 1]]  # colour blue/red, shape circle
    with pytest.raises(SemanticsError, match="no attributes"):
        miniworld_attributes(tmp_path / "dataset.json", ["c"])


def test_res101_mat_and_scarce_split_files(tmp_path):
    import scipy.io

    from digzsl_ray.data.split import Item
    from digzsl_ray.methods.zerodiff.features import res101_rows
    from digzsl_ray.methods.zerodiff.folds import scarce_file_mask

    n = 6
    files = np.array([[np.array([f"/BS/xx/SUN/images/a/b/img{i}.jpg"])] for i in range(n)], dtype=object)
    feats = np.arange(2048 * n, dtype=np.float32).reshape(2048, n)  # 2048 x N, as xlsa17 stores it
    scipy.io.savemat(tmp_path / "res101.mat", {"features": feats, "image_files": files,
                                                "labels": np.array([[1], [1], [2], [2], [3], [3]])})
    items = [Item(str(tmp_path / "images" / "a" / "b" / f"img{i}.jpg"), (0,)) for i in (4, 1)]
    x = res101_rows(tmp_path / "res101.mat", "SUN", tmp_path, 3, items)
    assert x.shape == (2, 2048) and x[0, 0] == 4.0 and x[1, 1] == feats[1, 1]
    scipy.io.savemat(tmp_path / "att_splits.mat", {"trainval_loc": np.array([[1], [2], [3], [4]])})
    scipy.io.savemat(tmp_path / "split_10percent.mat", {"trainval_loc": np.array([[2], [4]])})
    cfg = ZerodiffRunConfig()
    cfg.data.splits_dir = str(tmp_path)
    assert scarce_file_mask(cfg, str(tmp_path / "split_10percent.mat"), 4).tolist() == [False, True, False, True]
    scipy.io.savemat(tmp_path / "bad.mat", {"trainval_loc": np.array([[9]])})
    with pytest.raises(Exception, match="outside"):
        scarce_file_mask(cfg, str(tmp_path / "bad.mat"), 4)


def test_spuriousness_hand_case():
    from digzsl_ray.methods.zerodiff.spurious import spuriousness

    class Stub:
        device = torch.device("cpu")

        def critic_score(self, x, a):
            return x[:, 0].float()

        dec = torch.nn.Identity()

    stub = Stub()
    stub.dec = lambda x: (x[:, :2], None)
    stub.dec.eval = lambda: None
    att = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    train = (np.array([[1.0, 0.0], [3.0, 0.0]]), np.array([0, 0]))
    held = (np.array([[1.0, 0.0]]), np.array([0]))
    gen_u = (np.array([[5.0, 0.0]]), np.array([1]))
    real_u = (np.array([[2.0, 1.0]]), np.array([1]))
    s = spuriousness(stub, att, train, held, gen_u, real_u)
    assert s["spurious_seen"] == 1.0 and s["spurious_unseen"] == 3.0
    assert s["spurious_seen_z"] == pytest.approx(1.0 / np.std([1.0, 3.0], ddof=1), abs=1e-4)
    assert s["semantic_error_unseen"] == pytest.approx(0.5)  # |2-1| and |1-1|


def test_cnn_backbone_fine_tunes_saves_and_loads_without_ray(tmp_path):
    from safetensors.torch import save_file

    from digzsl_ray.methods.zerodiff.features import (
        CNN_MEAN,
        CNN_STD,
        FeatureExtractor,
        build_cnn,
        cnn_epoch,
        cnn_features,
        cnn_loss,
        load_cnn,
        save_cnn,
    )

    torch.manual_seed(0)
    imgs = torch.randint(0, 255, (16, 3, 32, 32), dtype=torch.uint8)
    imgs[8:] //= 4  # two classes: bright and dark images
    labels = torch.tensor([0] * 8 + [1] * 8)
    net = build_cnn("resnet18", 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    losses = [cnn_epoch(net, imgs, labels, opt, 8, 32, gen, "cpu") for _ in range(6)]
    assert losses[-1] < losses[0] and np.isfinite(cnn_loss(net, imgs, labels, 32, "cpu"))
    assert cnn_features(net, torch.rand(2, 3, 32, 32)).shape == (2, 512) and isinstance(net.fc, torch.nn.Linear)
    save_cnn(tmp_path / "cnn", net, {"arch": "resnet18", "num_classes": 2, "image_size": 32, "mean": list(CNN_MEAN),
                                     "std": list(CNN_STD)})
    again, meta = load_cnn(tmp_path / "cnn")
    net.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(cnn_features(again, x), cnn_features(net, x), atol=1e-6)
    ex = FeatureExtractor({"backbone": "cnn", "cnn_dir": str(tmp_path / "cnn"), "device": "cpu"})
    assert ex.features(imgs[:3]).shape == (3, 512)
    # weights by path: a state_dict with another class count starts the trunk, the head is new
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    warm = build_cnn("resnet18", 5, str(tmp_path / "w.safetensors"))
    assert warm.fc.out_features == 5 and torch.equal(warm.conv1.weight, net.conv1.weight)


def test_xlsa17_semantics_are_class_major_and_normalised(tmp_path):
    import scipy.io

    from digzsl_ray.data.split import ZSLSplit
    from digzsl_ray.methods.zerodiff.semantics import SemanticsError, class_semantics

    att = np.arange(1, 13, dtype=np.float64).reshape(4, 3)  # 4 dims x 3 classes, as att_splits.mat stores it
    scipy.io.savemat(tmp_path / "att_splits.mat", {"att": att, "original_att": att * 10})
    scipy.io.savemat(tmp_path / "sent_splits.mat", {"att": np.ones((6, 3))})
    split = ZSLSplit("x", ["a", "b", "c"], [0, 1], [2], {})
    cfg = ZerodiffRunConfig()
    cfg.data.splits_dir = str(tmp_path)
    for source, dims in (("att", 4), ("original_att", 4), ("sent", 6)):
        cfg.semantics.source = source
        a = class_semantics(cfg, split, tmp_path / "none")
        assert a.shape == (3, dims) and np.allclose(np.linalg.norm(a, axis=1), 1.0)
    cfg.semantics.source = "att"
    cfg.semantics.normalise = False
    assert class_semantics(cfg, split, tmp_path / "none")[0].tolist() == [1, 4, 7, 10]
    cfg.data.splits_dir = ""
    with pytest.raises(SemanticsError, match="needs att_splits.mat"):
        class_semantics(cfg, split, tmp_path / "none")


def test_res101_source_through_the_features_and_representation_stages(tmp_path):
    """An xlsa17 run with ``features.source: res101``: no image is read, the Parquet shards hold the
    mat's columns in split order, and the representation stage trains on them (no Ray needed)."""
    import scipy.io

    from digzsl_ray.methods import get_method, load_run_config
    from digzsl_ray.methods.zerodiff.features import read_features
    from digzsl_ray.stages.contract import execute
    from digzsl_ray.stages.runner import context

    splits = tmp_path / "splits"
    splits.mkdir()
    labels = np.repeat([1, 2, 3, 4], 4)  # 1-based; class 4 unseen
    n = len(labels)
    files = np.array([[np.array([f"/BS/data/SUN/images/k/img{i}.jpg"])] for i in range(n)], dtype=object)
    feats = np.random.default_rng(0).random((2048, n)).astype(np.float32)
    scipy.io.savemat(splits / "res101.mat", {"features": feats, "image_files": files, "labels": labels[:, None]})
    loc = lambda idx: np.asarray(idx, np.uint16).reshape(-1, 1) + 1  # noqa: E731
    scipy.io.savemat(splits / "att_splits.mat", {
        "trainval_loc": loc([0, 1, 2, 4, 5, 6, 8, 9, 10]), "test_seen_loc": loc([3, 7, 11]),
        "test_unseen_loc": loc([12, 13, 14, 15]), "allclasses_names": np.array(
            [["abbey"], ["beach"], ["canyon"], ["desert"]], dtype=object), "att": np.eye(4)})
    (tmp_path / "img").mkdir()
    cfg = load_run_config(None, ["method=zerodiff", "data.format=xlsa17", "data.dataset=SUN",
                                 f"data.splits_dir={splits}", f"data.root={tmp_path / 'img'}", "data.check_images=false",
                                 "data.val_fraction=0.34", "features.source=res101", "semantics.source=att",
                                 "represent.epochs=1", "represent.hidden=8", "represent.r_dim=4", "represent.proj_dim=2",
                                 "models.clip=miniworld"])
    ctx = context(cfg, get_method("zerodiff"), tmp_path / "run", progress=False)
    stage = ctx.method.stage("extract-features")
    meta = execute(stage, ctx)
    assert meta["dim"] == 2048 and meta["counts"] == {"trainval": 9, "test_seen": 3, "test_unseen": 4}
    x, y = read_features(ctx.path("extract-features:dir") / "trainval")
    assert np.array_equal(x, feats[:, [0, 1, 2, 4, 5, 6, 8, 9, 10]].T) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert stage.complete(ctx)
    rep = execute(ctx.method.stage("train-representation"), ctx)
    assert set(rep) == {"val", "final"}
