"""The global feature-fusion branch: reference maths, zero start, placement in ResNet and ViT towers."""

import open_clip
import pytest
import torch

from digzsl_ray.methods.multilabel.fusion import (
    GlobalBranch2d,
    GlobalBranchTokens,
    LocalGlobalConv,
    branch_parameters,
    convert_resnet,
    convert_vit,
)
from digzsl_ray.models.presets import ASSETS


def test_branch_2d_matches_the_written_formula():
    torch.manual_seed(0)
    br = GlobalBranch2d(16).eval()
    torch.nn.init.normal_(br.bn.weight)  # make the output visible
    x = torch.randn(2, 16, 5, 5)
    xl = torch.relu(br.local[0](x))
    h = torch.cat([xl, xl.mean((2, 3), keepdim=True).expand_as(xl)], 1)
    a = br.agg(h).flatten(2).softmax(-1)
    g = torch.sigmoid(br.gate(h)).flatten(2)
    out = torch.zeros_like(x)
    for k in range(8):
        xs = x[:, 2 * k:2 * k + 2].flatten(2)  # [B, 2, HW]
        v = (xs * a[:, k:k + 1]).sum(-1, keepdim=True)
        out[:, 2 * k:2 * k + 2] = (v * g[:, k:k + 1]).reshape(2, 2, 5, 5)
    torch.testing.assert_close(br(x), br.bn(out))


def test_branches_start_near_zero():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 6, 6)
    assert GlobalBranch2d(32).eval()(x).abs().max() < 1e-2
    assert GlobalBranchTokens(32)(torch.randn(2, 10, 32)).abs().max() < 1e-3


def test_resnet_placement_wraps_3x3_convs_with_more_than_32_inputs():
    model = open_clip.create_model("RN50", pretrained=None).visual.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
    n = convert_resnet(model)
    # RN50 bottlenecks: 3 + 4 + 6 + 3 = 16 conv2 layers; all have width 64..512 > 32. The stem's 3x3s have <= 32 inputs.
    assert n == 16 and sum(isinstance(m, LocalGlobalConv) for m in model.modules()) == 16
    model.eval()
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, atol=5e-2 * before.abs().max().item(), rtol=0)


def test_vit_analogue_on_the_shipped_clip_keeps_outputs_and_trains_only_branches():
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{ASSETS / 'clip'}")
    model = model.float().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model.encode_image(x)
    n = convert_vit(model.visual.transformer)
    assert n == len(model.visual.transformer.resblocks)
    model.requires_grad_(False)
    for p in branch_parameters(model):
        p.requires_grad_(True)
    out = model.encode_image(x)
    torch.testing.assert_close(out, before, atol=1e-3, rtol=0)
    out.sum().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all("global_branch" in n for n in trained)


def test_bad_widths_are_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        GlobalBranch2d(12)
