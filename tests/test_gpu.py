"""GPU paths (fp16/bf16 autocast, xformers, gradient checkpointing). Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny_models

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_dct_update_in_half_precision_changes_only_the_row(tmp_path, precision):
    from digzsl_ray.methods.digzsl.cdm import CDM, CDMHead
    from digzsl_ray.methods.digzsl.config import TokensConfig
    from digzsl_ray.methods.digzsl.dct import DCTLearner
    from digzsl_ray.models.presets import (
        clip_image_size,
        clip_norm,
        load_clip,
        load_sd_pipeline,
    )
    from digzsl_ray.prototypes import build_prototypes

    sd, clip = make_tiny_models(tmp_path)
    pipe = load_sd_pipeline(str(sd), device="cuda", precision=precision)
    assert pipe.unet.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model, _, tok = load_clip(f"local-dir:{clip}", device="cuda")
    protos = build_prototypes(model, tok, ["a", "b", "c"], ["{}"], device="cuda")
    cdm = CDM(model, CDMHead(protos, protos.shape[1], 8, 0.1), clip_image_size(model), *clip_norm(model)).cuda()
    s = TokensConfig(templates=["a {token} {name}"], batch_size=2, num_inference_steps=3, max_updates=3,
                     min_updates=3, gamma=1.0, gradient_checkpointing=True)
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    res = DCTLearner(pipe, cdm, [1, 2], s, precision=precision).learn("c", 2, "<dct-c>", "c")
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(after[: len(before)], before)
    assert torch.isfinite(res.vector).all() and not torch.equal(res.vector, res.init_vector)


def test_xformers_attention_when_installed(tmp_path):
    pytest.importorskip("xformers")
    from digzsl_ray.models.presets import load_sd_pipeline
    from digzsl_ray.models.sd import generate

    sd, _ = make_tiny_models(tmp_path)
    pipe = load_sd_pipeline(str(sd), device="cuda", precision="fp16", attention="xformers")
    imgs = generate(pipe, ["a red circle"] * 2, [0, 1], steps=2, guidance=3.0)
    assert imgs.shape == (2, 3, 16, 16) and torch.isfinite(imgs).all()




def test_classifier_head_trains_on_cached_cpu_features_on_the_gpu():
    import torch.nn.functional as F

    from digzsl_ray.classifier import PrototypeHead
    from digzsl_ray.methods.digzsl.head import head_logits, train_head

    torch.manual_seed(0)
    protos = F.normalize(torch.randn(4, 16), dim=-1)
    y = torch.arange(4).repeat_interleave(20)
    feats = protos[y].unsqueeze(0) + 0.05 * torch.randn(2, len(y), 16)  # [views, N, D] on the CPU
    head = PrototypeHead(protos, 16.0).cuda()
    teacher = torch.stack([16.0 * F.normalize(feats[v], dim=-1) @ protos.t() for v in range(2)])
    info = train_head(head, feats, y, feats[0], y.numpy(), epochs=3, patience=3, lr=1e-2, weight_decay=0.0,
                      batch=16, seed=0, teacher=teacher, distill=0.5, init_candidate=True, device="cuda")
    assert info["best_val_acc"] == 100.0
    assert head_logits(head, feats[0]).device.type == "cpu"
