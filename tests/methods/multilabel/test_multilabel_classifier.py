"""DualCoOp-style contexts and region scores on the shipped tiny CLIP (ViT tower with fusion branches)."""

import open_clip
import pytest
import torch

from digzsl_ray.methods.multilabel.classifier import (
    PromptContexts,
    positive_probability,
    region_scores,
    vit_regions,
)
from digzsl_ray.methods.multilabel.fusion import branch_parameters, convert_vit
from digzsl_ray.models.presets import ASSETS


@pytest.fixture(scope="module")
def clip():
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{ASSETS / 'clip'}")
    tok = open_clip.get_tokenizer(f"local-dir:{ASSETS / 'clip'}")
    return model.float().eval(), tok


def test_context_prompts_go_through_the_text_tower_like_token_ids(clip):
    model, tok = clip
    names = ["red circle", "faramu"]
    pc = PromptContexts(model, tok, names, n_ctx=4)
    with torch.no_grad():
        # with the contexts set to the embedding of "X", the features equal encoding the literal prompt
        x_emb = model.token_embedding(tok(["X"]))[0, 1]
        pc.ctx_pos.copy_(x_emb.expand(4, -1))
        pos, _ = pc(model)
        want = model.encode_text(tok(["X X X X red circle.", "X X X X faramu."]), normalize=True)
    torch.testing.assert_close(pos, want, atol=1e-5, rtol=0)


def test_only_contexts_and_branches_train(clip):
    model, tok = clip
    model = open_clip.create_model_and_transforms(f"local-dir:{ASSETS / 'clip'}")[0].float().eval()
    convert_vit(model.visual.transformer)
    model.requires_grad_(False)
    pc = PromptContexts(model, tok, ["red circle", "blue square", "faramu"], n_ctx=4)
    for p in branch_parameters(model):
        p.requires_grad_(True)
    images = torch.rand(2, 3, 32, 32)
    regions = vit_regions(model.visual, images)
    assert regions.shape == (2, 65, 64)  # the class token + (32/4)^2 patches, embed 64
    with torch.no_grad():  # region 0 is the image's CLIP embedding
        assert torch.allclose(regions[:, 0], torch.nn.functional.normalize(model.encode_image(images), dim=-1),
                              atol=1e-5)
    logits = region_scores(regions, *pc(model))
    assert logits.shape == (2, 2, 3)
    prob = positive_probability(logits)
    assert ((prob > 0) & (prob < 1)).all()
    prob.sum().backward()
    grads = {n for n, p in [*model.named_parameters(), *pc.named_parameters()] if p.grad is not None}
    assert {"ctx_pos", "ctx_neg"} <= grads and all(n.startswith("ctx_") or "global_branch" in n for n in grads)


def test_region_scores_weight_regions_by_the_positive_softmax():
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two regions
    pos, neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    out = region_scores(regions, pos, neg, logit_scale=1.0, agg_scale=1.0)
    w = torch.tensor([1.0, 0.0]).softmax(0)
    torch.testing.assert_close(out[0, 1, 0], (w * torch.tensor([1.0, 0.0])).sum())
    torch.testing.assert_close(out[0, 0, 0], (w * torch.tensor([0.0, 1.0])).sum())


def test_prompts_that_do_not_fit_are_refused(clip):
    model, tok = clip
    with pytest.raises(ValueError, match="do not fit the text tower's 32 tokens with n_ctx=30"):
        PromptContexts(model, tok, ["striped purple diamond"], n_ctx=30)
