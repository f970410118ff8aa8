"""The multi-label method's pieces without Ray: resolution change, label-set plan, the filter's
decisions, the classifier model and its saved form, threshold choice, serving answers, config."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from digzsl_ray.methods.multilabel.classifier import MultiLabelCLIP, load_multilabel
from digzsl_ray.methods.multilabel.generation import Discriminator, draw_sets, plan_rows, shard_ids
from digzsl_ray.methods.multilabel.stages.classifier import multi_hot, pick_columns
from digzsl_ray.methods.multilabel.stages.evaluate import choose_threshold, f1_at_threshold
from digzsl_ray.models.presets import ASSETS
from digzsl_ray.models.vit import set_vit_resolution


def _clip():
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{ASSETS / 'clip'}")
    return model.float().eval(), open_clip.get_tokenizer(f"local-dir:{ASSETS / 'clip'}")


def test_vit_resolution_resizes_the_positional_grid_and_keeps_the_native_size_exact():
    model, _ = _clip()
    x32 = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model.encode_image(x32)
    assert set_vit_resolution(model.visual, 32) is False  # already 32: untouched
    pe_cls = model.visual.positional_embedding[0].clone()
    assert set_vit_resolution(model.visual, 64) is True
    assert model.visual.positional_embedding.shape[0] == 1 + 16 * 16
    assert torch.equal(model.visual.positional_embedding[0], pe_cls)  # the class token's vector is kept
    with torch.no_grad():
        assert model.encode_image(torch.rand(2, 3, 64, 64)).shape == before.shape
    # back to 32: a bicubic down/up round trip is close to, not exactly, the original grid
    set_vit_resolution(model.visual, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x32), before, atol=0.15)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        set_vit_resolution(model.visual, 30)


def test_label_sets_meet_the_quota_and_prompts_come_from_their_pair():
    names = ["a", "b", "c", "d", "e"]
    labels = [0, 1, 3, 4]  # split-wide indices of the labels to sample (not 2)
    sets, notes = draw_sets(labels, names, quota=5, set_size=2, redraw_single=True, confusions=[["b", "d"]], seed=0)
    held = {i: sum(i in s for s in sets) for i in labels}
    assert all(n >= 5 for n in held.values())
    # never the confusion; single-label sets only at the end, once one label is left in the pool
    assert all(set(s) != {1, 3} for s in sets) and not notes
    first_single = next(i for i, s in enumerate(sets) if len(s) == 1)
    assert all(len(s) == 1 for s in sets[first_single:]) and first_single > len(sets) // 2
    again, _ = draw_sets(labels, names, 5, 2, True, [["b", "d"]], seed=0)
    assert again == sets
    phrases = {("b", "e"): ["B and E one", "B and E two"], ("d", "e"): ["D and E"]}
    rows = plan_rows(sets, names, phrases, seed=3, tag="generate")
    for r in rows:
        key = tuple(names[i] for i in r.targets)
        if key in phrases:
            assert r.prompt in phrases[key]
        else:
            a, b = key if len(key) == 2 else key * 2  # a single label is the pair (a, a)
            from digzsl_ray.methods.multilabel.prompts import fallback

            assert r.prompt == fallback(a, b)  # no phrases: the reference's fallback ("A photo of a X next to a Y.")
            assert r.prompt.startswith("A photo of a") and r.prompt.endswith(f"next to a{'n' if b in 'ae' else ''} {b}.")
    # a pair's phrases are used in turn, and every image has its own seed
    be = [r.prompt for r in rows if tuple(names[i] for i in r.targets) == ("b", "e")]
    assert be[:2] == ["B and E one", "B and E two"]
    assert len({r.seed for r in rows}) == len(rows)
    a = shard_ids(rows, "base", 4, "settings-1")
    b = shard_ids(rows, "base", 4, "settings-2")
    assert [len(p) for _, p in a] == [len(p) for _, p in b] and all(x != y for (x, _), (y, _) in zip(a, b))


def test_accepted_quota_rounds_plan_only_for_labels_short_of_it():
    from digzsl_ray.methods.multilabel.generation import accepted_counts, draw_round, plan_rows, round_needs

    rows = [{"targets": [0, 1], "accepted": True}, {"targets": [0, 2], "accepted": False},
            {"targets": [1, 2], "accepted": False}, {"targets": [0], "accepted": True}]
    held, kept = accepted_counts(rows)
    assert held == {0: 3, 1: 2, 2: 2} and kept == {0: 2, 1: 1, 2: 0}
    # quota 2: label 0 met it; label 1 is 1 short at acceptance 1/2 -> 2 more appearances; label 2 is 2 short
    # with nothing accepted yet -> acceptance taken as 5% -> 40; label 3 never drawn -> 2 / 0.05
    assert round_needs(held, kept, [0, 1, 2, 3], 2) == {1: 2, 2: 40, 3: 40}
    names = ["a", "b", "c", "d"]
    sets, _ = draw_round({1: 2, 2: 40, 3: 40}, names, 2, True, [["a", "b"]], seed=0)
    count = {c: sum(c in s for s in sets) for c in range(4)}
    assert count[0] == 0 and count[1] >= 2 and count[2] >= 40 and count[3] >= 40
    again, _ = draw_round({1: 2, 2: 40, 3: 40}, names, 2, True, [["a", "b"]], seed=0)
    assert again == sets
    used: dict = {}
    first = plan_rows([(1, 2)], names, {("b", "c"): ["p0", "p1"]}, 0, "generate", 0, used)
    later = plan_rows([(1, 2)], names, {("b", "c"): ["p0", "p1"]}, 0, "generate", 7, used)
    assert (first[0].index, later[0].index) == (0, 7) and first[0].seed != later[0].seed
    assert first[0].prompt != later[0].prompt  # the next phrase of the pair, not the first again


def test_filter_decisions_map_back_to_dataset_labels(monkeypatch, tmp_path):
    from digzsl_ray.prototypes import save_prototypes

    model, tok = _clip()
    names = ["s0", "u1", "s2", "u3", "u4"]
    protos = torch.nn.functional.normalize(torch.randn(5, model.text_projection.shape[1]), dim=-1)
    save_prototypes(tmp_path / "p.safetensors", protos, names)
    d = Discriminator("miniworld", "", str(tmp_path / "p.safetensors"), [1, 3, 4], "exact", 0.5, 7, 0.1, {},
                      0, "cpu")
    # logits over the candidates (u1, u3, u4): image 0 shows u1 and u3, image 1 only u4
    logits = torch.tensor([[10.0, 9.0, -5.0], [-5.0, -5.0, 10.0]])
    monkeypatch.setattr(d, "logits", lambda images: logits)
    ok, bad = d.decide(torch.zeros(2, 3, 32, 32), [[1, 3], [1, 4]])
    assert ok.accepted and ok.labels == [1, 3] and ok.targets == [1, 3]
    assert not bad.accepted and bad.labels == [] and "targets" in bad.reason
    d.policy = "topk_extra"
    d.top_k, d.extra = 2, 0.1
    monkeypatch.setattr(d, "logits", lambda images: logits[1:])
    one = d.decide(torch.zeros(1, 3, 32, 32), [[4]])[0]  # u4 is the target, nothing else confident
    assert one.accepted and one.labels == [4] and one.added == []


def test_classifier_starts_as_its_contexts_alone_and_saves_only_what_trains(tmp_path):
    names = ["red circle", "blue square", "faramu", "goso"]
    torch.manual_seed(0)
    clip, tok = _clip()
    net = MultiLabelCLIP(clip, tok, names, n_ctx=4, image_size=64, branch=True)
    torch.manual_seed(0)
    clip2, tok2 = _clip()
    plain = MultiLabelCLIP(clip2, tok2, names, n_ctx=4, image_size=64, branch=False)
    plain.contexts.load_state_dict(net.contexts.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # the branch's output gain starts at ~1e-4: the model starts as the contexts without it
        assert torch.allclose(net(x), plain(x), atol=1e-2)
    state = net.trainable_state()
    assert all(n.startswith("contexts.") or "global_branch" in n for n in state)
    assert {"contexts.ctx_pos", "contexts.ctx_neg"} <= set(state) and len(state) > 2
    assert all(not p.requires_grad for n, p in net.named_parameters() if n not in state)
    # the subset text features are the full ones' columns (class subsampling)
    with torch.no_grad():
        pos, neg = net.text_features()
        sp, sn = net.text_features(torch.tensor([1, 3]))
    assert torch.allclose(sp, pos[[1, 3]], atol=1e-5) and torch.allclose(sn, neg[[1, 3]], atol=1e-5)
    # saved as the stage saves it, loaded as serving loads it: the same probabilities
    with torch.no_grad():
        net.contexts.ctx_pos.add_(0.1)
    _assert_served_like(net, names, tmp_path, n_ctx=4)  # an old classifier folder: no head key -> contexts


def _assert_served_like(net, names, tmp_path, **config):
    """Saved as the stage saves ``net``, loaded as serving loads it: the same probabilities."""
    from safetensors.torch import save_file

    from digzsl_ray.io import write_json

    save_file(net.trainable_state(), str(tmp_path / "weights.safetensors"))
    write_json(tmp_path / "config.json", {"clip": "miniworld", "clip_pretrained": "", "image_size": 64,
                                          "branch": True, "logit_scale": 20.0, "agg_scale": 5.0,
                                          "mean": [0.5] * 3, "std": [0.25] * 3, "class_names": names, **config})
    served, _ = load_multilabel(tmp_path)
    img = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        want = torch.softmax(net((img.float() / 255 - 0.5) / 0.25), 1)[:, 1]
    assert torch.allclose(served(img), want, atol=1e-5)


def test_ctx_init_puts_the_prompt_words_at_the_end_of_the_positive_context():
    from digzsl_ray.methods.multilabel.classifier import PromptContexts

    clip, tok = _clip()
    torch.manual_seed(0)
    ctx = PromptContexts(clip, tok, ["red circle", "faramu"], n_ctx=6, ctx_init="a photo of a")
    words = clip.token_embedding(tok(["a photo of a"]))[0, 1:5]
    assert torch.equal(ctx.ctx_pos[2:].detach(), words) and not torch.equal(ctx.ctx_neg[2:].detach(), words)
    with pytest.raises(ValueError, match="ctx_init"):
        PromptContexts(clip, tok, ["red circle"], n_ctx=2, ctx_init="a photo of a")


def test_class_subsampling_keeps_positives_and_respects_the_cap():
    rng = np.random.default_rng(0)
    cols = np.arange(10, 30)
    y = multi_hot([[11, 12], [25]], 40)
    got = pick_columns(y, cols, 6, rng)
    assert len(got) == 6 and {11, 12, 25} <= set(got.tolist()) and set(got.tolist()) <= set(cols.tolist())
    assert np.array_equal(pick_columns(y, cols, 0, rng), cols)


def test_threshold_is_chosen_by_f1_on_the_validation_blocks():
    s = np.array([[0.9, 0.2], [0.6, 0.4]])
    y = np.array([[1, 0], [0, 1]])
    # t=0.3: tp 2 (0.9, 0.4) fp 1 (0.6) fn 0 -> 80; t=0.5: tp 1 fp 1 fn 1 -> 50; t=0.7: tp 1 fn 1 -> 66.7
    assert f1_at_threshold([(s, y)], 0.3) == pytest.approx(80.0)
    assert f1_at_threshold([(s, y)], 0.5) == pytest.approx(50.0)
    t, f1 = choose_threshold([(s, y)], 19)
    assert f1 == 80.0 and 0.2 <= t < 0.4


def test_multi_label_answer_and_threshold_parsing():
    from digzsl_ray.serve import RequestError, multi_label_answer, parse_threshold

    probs = np.array([0.1, 0.8, 0.55, 0.3])
    a = multi_label_answer(probs, ["a", "b", "c", "d"], {0, 1}, 0.5, 3)
    assert [r["class"] for r in a["labels"]] == ["b", "c"] and a["labels"][0]["seen"] and not a["labels"][1]["seen"]
    assert [r["class"] for r in a["predictions"]] == ["b", "c", "d"] and a["threshold"] == 0.5
    assert parse_threshold(None, 0.4) == 0.4 and parse_threshold("0.25", 0.4) == 0.25
    for bad in ("0", "1", "x", True, -0.1):
        with pytest.raises(RequestError):
            parse_threshold(bad, 0.4)


def test_multilabel_config_and_method_registration():
    from digzsl_ray.config import ConfigError
    from digzsl_ray.methods import get_method, load_run_config

    cfg = load_run_config("miniworld_multilabel")
    assert cfg.method == "multilabel" and cfg.data.format == "miniworld-multilabel"
    m = get_method("multilabel")
    assert m.multi_label and [s.name for s in m.stages] == ["prototypes", "prompts", "tune-text-encoder", "generate",
                                                            "train-classifier", "evaluate"]
    assert m.variants == ("clip_zero_shot", "no_synthetic", "unfiltered", "filtered", "filtered_tuned")
    with pytest.raises(ConfigError, match="generate.confusions"):
        load_run_config("miniworld_multilabel", ["generate.confusions=[[a, a]]"])
    for name in ("coco", "nuswide"):
        c = load_run_config(name)
        assert c.method == "multilabel" and c.models.sd and c.prompts.backend == "chat"
        assert c.generate.quota_counts == "accepted" and c.generate.images_per_label == 200 and c.generate.max_rows == 0


def test_a_tuned_text_encoder_folder_loads_into_a_stock_pipeline_and_scenes_render_at_64px(tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    from digzsl_ray.models.presets import load_sd_pipeline
    from digzsl_ray.models.sd import generate

    pipe = load_sd_pipeline("miniworld")
    with torch.no_grad():
        next(pipe.text_encoder.parameters()).add_(0.5)  # stands in for a tuned encoder
    pipe.text_encoder.save_pretrained(str(tmp_path / "text_encoder"), safe_serialization=True)
    stock = StableDiffusionPipeline.from_pretrained(str(ASSETS / "sd"), safety_checker=None,
                                                    requires_safety_checker=False,
                                                    text_encoder=CLIPTextModel.from_pretrained(str(tmp_path / "text_encoder")))
    ours = load_sd_pipeline("miniworld", text_encoder=str(tmp_path / "text_encoder"))
    want = pipe.text_encoder.state_dict()
    for p in (stock, ours):
        got = p.text_encoder.state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want)
    ours.set_progress_bar_config(disable=True)
    a = generate(ours, ["a red circle next to a blue square"] * 2, [1, 2], 3, 3.0, size=64)
    b = generate(ours, ["a red circle next to a blue square"], [2], 3, 3.0, size=64)
    assert a.shape == (2, 3, 64, 64) and torch.allclose(a[1], b[0], atol=1e-5)  # per-image seeds, any batching
    assert generate(ours, ["x"], [1], 2, 3.0).shape[-1] == 32  # the UNet's native size by default


def test_an_image_size_a_patch14_tower_cannot_take_is_a_config_error_before_any_work(tmp_path, capsys):
    import json

    from digzsl_ray.cli.main import main

    clip = tmp_path / "vit-l-14"
    clip.mkdir()
    (clip / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 768, "vision_cfg": {
        "image_size": 224, "layers": 24, "width": 1024, "patch_size": 14}, "text_cfg": {}}}))
    out = tmp_path / "run"
    code = main(["run", "--config", "miniworld_multilabel", "--out", str(out), "--set", f"models.clip=local-dir:{clip}"])
    err = capsys.readouterr().err
    assert code == 2 and "filter.image_size" in err and "multiple of 14" in err and "Traceback" not in err
    assert not out.exists()  # nothing was written: no dataset rendered, no stage started
    # with the sizes from the model (0) the check passes
    from digzsl_ray.methods import get_method, load_run_config

    cfg = load_run_config("miniworld_multilabel", [f"models.clip=local-dir:{clip}", "filter.image_size=0",
                                                   "classifier.image_size=224"])
    get_method("multilabel").preflight(cfg)


def test_a_run_without_tuning_serves_its_filtered_classifier():
    from digzsl_ray.methods import get_method, load_run_config

    m = get_method("multilabel")
    assert m.serve_ref(load_run_config("miniworld_multilabel")) == "train-classifier:filtered_tuned"
    untuned = load_run_config("miniworld_multilabel", ["tune.enabled=false"])
    assert m.serve_ref(untuned) == "train-classifier:filtered"  # filtered_tuned is never trained then
    assert get_method("digzsl").serve_ref(load_run_config("miniworld")) == "train-classifier:dct"


def _prototype_net(names, protos, branch=False, **kw):
    clip, tok = _clip()
    return MultiLabelCLIP(clip, tok, names, image_size=64, branch=branch, head="prototypes", regions="class_token",
                          prototypes=protos, **kw)


def test_the_prototype_head_starts_as_the_frozen_clip_floor_and_ranks_without_ties():
    from digzsl_ray.features import zero_shot_logits
    from digzsl_ray.metrics.multilabel import average_precision
    from digzsl_ray.methods.multilabel.classifier import positive_margin, positive_probability, vit_regions
    from digzsl_ray.methods.multilabel.stages.evaluate import ranking

    names = ["red circle", "blue square", "faramu", "goso"]
    torch.manual_seed(0)
    protos = torch.randn(4, 64)
    net = _prototype_net(names, protos, bias_init=0.1)
    x = torch.randn(40, 3, 64, 64)
    with torch.no_grad():
        logits = net(x)
        feats = vit_regions(net.clip.visual, x, class_token_only=True)[:, 0]
    floor = zero_shot_logits(feats.numpy(), protos, 100.0)
    margin = positive_margin(logits).numpy()
    # margin = 100 * (cos - 0.1): the floor's logits shifted by the threshold, per label the same ranking
    np.testing.assert_allclose(margin, floor - 10.0, atol=1e-3)
    y = (np.random.default_rng(0).random((40, 4)) < 0.3).astype(np.float32)
    np.testing.assert_allclose(average_precision(margin, y), average_precision(floor, y), atol=1e-6)
    # a margin beyond ~17 saturates the float32 probability into ties; the margins stay distinct
    big = torch.tensor([[[0.0, 0.0, 0.0]], [[20.0, 30.0, 40.0]]]).permute(1, 0, 2)  # [1, 2, 3]: pos 20, 30, 40
    prob = positive_probability(big)
    assert len(torch.unique(prob)) == 1 and len(torch.unique(positive_margin(big))) == 3
    s = {"test_unseen_scores": prob.numpy(), "test_unseen_margins": positive_margin(big).numpy()}
    assert ranking(s, "test_unseen") is s["test_unseen_margins"]
    assert ranking({"test_unseen_scores": s["test_unseen_scores"]}, "test_unseen") is s["test_unseen_scores"]


def test_training_on_seen_columns_leaves_an_unseen_labels_row_where_it_started():
    from types import SimpleNamespace

    from digzsl_ray.methods.multilabel.stages.classifier import _run_pass, make_optimisers, prototype_penalty

    names = ["red circle", "blue square", "faramu", "goso"]
    torch.manual_seed(0)
    protos = torch.nn.functional.normalize(torch.randn(4, 64), dim=-1)
    net = _prototype_net(names, protos)
    c = SimpleNamespace(lr=1e-2, weight_decay=0.0, branch_optimizer="sgd", branch_lr=1e-4, batch_size=4,
                        augment=False, max_classes_per_batch=0, gamma_neg=2.0, gamma_pos=1.0, clip=0.05)
    opts = make_optimisers(net, c)
    x = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    y = np.zeros((8, 4), np.float32)
    y[:4, 0] = y[4:, 1] = 1
    seen = np.array([0, 1])
    loss = _run_pass(net, net, opts, x, y, seen, torch.Generator().manual_seed(0), np.random.default_rng(0), c,
                     [0.5] * 3, [0.25] * 3, "cpu")
    assert np.isfinite(loss)
    w, b = net.weight.detach(), net.head_bias.detach()
    assert not torch.allclose(w[:2], protos[:2]) and torch.equal(w[2:], protos[2:])  # unseen rows untouched
    assert torch.equal(b[2:], torch.full((2,), 0.3))
    # the pull toward the prototypes is zero at the start and grows as a row moves away
    assert float(prototype_penalty(net, (protos, 1.0)).detach()) > 0
    fresh = _prototype_net(names, protos)
    assert float(prototype_penalty(fresh, (protos, 1.0)).detach()) == pytest.approx(0.0, abs=1e-6)


def test_a_prototype_head_classifier_saves_and_serves_the_same_probabilities(tmp_path):
    names = ["red circle", "blue square", "faramu", "goso"]
    torch.manual_seed(1)
    net = _prototype_net(names, torch.randn(4, 64), branch=True)
    with torch.no_grad():
        net.weight.add_(0.05 * torch.randn_like(net.weight))
        net.head_bias.add_(0.1)
    state = net.trainable_state()
    assert {"weight", "head_bias"} <= set(state) and all(
        n in ("weight", "head_bias") or "global_branch" in n for n in state)
    _assert_served_like(net, names, tmp_path, n_ctx=16, head="prototypes", regions="class_token", negative="prompt")
