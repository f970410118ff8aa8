"""The plug-in global feature-fusion branch of Diff-ZS-MLC's classifier (plain torch).

Reference: ``classification_*/models/global_branch.py`` (``GlobalBranch``, ``LocalGlobalConv``,
``convert_to_lgconv``); reference/multilabel-and-zerodiff.md section A5.

**ResNet towers (the reference placement).** Every 3x3 convolution of the visual trunk with more
than 32 input channels (the ``conv2`` of each bottleneck) becomes ``conv(x) + GlobalBranch(x)``:

    x_l   = ReLU(Conv1x1_{C -> C/4}(x));  g = mean_HW(x_l);  h = [x_l ; g broadcast over H x W]
    A_agg = softmax_HW(Conv1x1_{2C/4 -> 8}(h));  A_b = sigmoid(Conv1x1_{2C/4 -> 8}(h))
    v_k   = sum_HW x_k * A_agg_k  for each of 8 channel groups x_k;  out_k = v_k * A_b_k
    out   = BatchNorm(out), its weight drawn from N(0, 1e-4) and bias 0: the branch starts at ~0.

A convolution whose output differs from its input in channels or size (a stride) is left alone:
the branch's output has the input's shape. The frozen backbone stays in eval mode as in the
reference (``model.eval()`` during training), so the branch's BN uses its running statistics.

**ViT towers (our analogue; MiniWorld's CLIP and ViT-L/14).** The token-mixing operation of a ViT
is each block's self-attention, so the branch sits beside it: ``attn(ln_1(x)) + GlobalBranch(ln_1(x))``
with tokens as positions (the class token is one more position). The 1x1 convolutions become
linear maps over the channel axis, the softmax runs over tokens, and the zero-start BatchNorm
becomes a per-channel gain drawn from N(0, 1e-4) (a LayerNorm-free ViT has no batch statistics to
reuse). Only the branches (and the prompt contexts) are trained.
"""

from __future__ import annotations

import torch
from torch import nn

HEADS = 8


class GlobalBranch2d(nn.Module):
    """The reference branch on a feature map ``[B, C, H, W]`` -> ``[B, C, H, W]``."""

    def __init__(self, channels: int, heads: int = HEADS):
        super().__init__()
        if channels % heads or channels < 4:
            raise ValueError(f"channels ({channels}) must be a multiple of {heads} and at least 4")
        q = channels // 4
        self.heads = heads
        self.local = nn.Sequential(nn.Conv2d(channels, q, 1), nn.ReLU(inplace=False))
        self.agg = nn.Conv2d(2 * q, heads, 1)
        self.gate = nn.Conv2d(2 * q, heads, 1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.normal_(self.bn.weight, 0.0, 1e-4)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xl = self.local(x)
        hcat = torch.cat([xl, xl.mean((2, 3), keepdim=True).expand_as(xl)], 1)
        a_agg = self.agg(hcat).flatten(2).softmax(-1)  # [B, heads, HW]
        a_b = torch.sigmoid(self.gate(hcat)).flatten(2)  # [B, heads, HW]
        xh = x.reshape(b, self.heads, c // self.heads, h * w)
        v = (xh * a_agg.unsqueeze(2)).sum(-1, keepdim=True)  # [B, heads, C/heads, 1]
        out = (v * a_b.unsqueeze(2)).reshape(b, c, h, w)
        return self.bn(out)


class LocalGlobalConv(nn.Module):
    """``conv(x) + branch(x)``: a drop-in replacement of a 3x3 convolution."""

    def __init__(self, conv: nn.Conv2d, heads: int = HEADS):
        super().__init__()
        self.conv = conv
        self.global_branch = GlobalBranch2d(conv.in_channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.global_branch(x)


def convert_resnet(trunk: nn.Module, min_in_channels: int = 32, heads: int = HEADS) -> int:
    """Wrap every eligible 3x3 convolution of ``trunk`` in place; returns how many were wrapped."""
    n = 0
    for name, child in list(trunk.named_children()):
        if (isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and child.in_channels > min_in_channels
                and child.in_channels == child.out_channels and child.stride == (1, 1)
                and child.in_channels % heads == 0):
            setattr(trunk, name, LocalGlobalConv(child, heads))
            n += 1
        elif not isinstance(child, LocalGlobalConv):
            n += convert_resnet(child, min_in_channels, heads)
    return n


class GlobalBranchTokens(nn.Module):
    """The branch on tokens ``[B, N, D]`` (batch first) -> ``[B, N, D]`` (our ViT analogue)."""

    def __init__(self, dim: int, heads: int = HEADS):
        super().__init__()
        if dim % heads or dim < 4:
            raise ValueError(f"width ({dim}) must be a multiple of {heads} and at least 4")
        q = dim // 4
        self.heads = heads
        self.local = nn.Sequential(nn.Linear(dim, q), nn.ReLU(inplace=False))
        self.agg = nn.Linear(2 * q, heads)
        self.gate = nn.Linear(2 * q, heads)
        self.gain = nn.Parameter(torch.randn(dim) * 1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        xl = self.local(x)
        hcat = torch.cat([xl, xl.mean(1, keepdim=True).expand_as(xl)], -1)
        a_agg = self.agg(hcat).softmax(1)  # [B, N, heads], softmax over tokens
        a_b = torch.sigmoid(self.gate(hcat))  # [B, N, heads]
        xh = x.reshape(b, n, self.heads, d // self.heads)
        v = (xh * a_agg.unsqueeze(-1)).sum(1, keepdim=True)  # [B, 1, heads, D/heads]
        out = (v * a_b.unsqueeze(-1)).reshape(b, n, d)
        return out * self.gain


class AttentionWithGlobalBranch(nn.Module):
    """Stands in for a block's ``nn.MultiheadAttention``: its output plus the branch on the query."""

    def __init__(self, attn: nn.MultiheadAttention, heads: int = HEADS):
        super().__init__()
        if not attn.batch_first:
            raise ValueError("the ViT analogue expects batch-first attention (open_clip's default)")
        self.attn = attn
        self.global_branch = GlobalBranchTokens(attn.embed_dim, heads)
        self.batch_first = True
        self.embed_dim = attn.embed_dim

    def forward(self, query, key, value, need_weights=False, attn_mask=None, **kw):
        out, weights = self.attn(query, key, value, need_weights=need_weights, attn_mask=attn_mask, **kw)
        return out + self.global_branch(query), weights


def convert_vit(transformer: nn.Module, heads: int = HEADS) -> int:
    """Put a branch beside the self-attention of every block of an open_clip ViT ``transformer``."""
    n = 0
    for block in getattr(transformer, "resblocks", []):
        if isinstance(block.attn, nn.MultiheadAttention):
            block.attn = AttentionWithGlobalBranch(block.attn, heads)
            n += 1
    return n


def branch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every global branch in ``model`` (the only visual ones that train)."""
    return [p for m in model.modules() if isinstance(m, (GlobalBranch2d, GlobalBranchTokens)) for p in m.parameters()]
