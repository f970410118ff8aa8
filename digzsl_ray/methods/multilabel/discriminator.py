"""The CLIP discriminator of Diff-ZS-MLC: grouping softmax and the two filter policies (plain torch).

Reference: TAKELAMAG/Diff-ZS-MLC ``generate_image_*/clip_classification.py::ClipPipeline.forward`` and
``inference.py`` (reference/multilabel-and-zerodiff.md section A3).

**Grouping softmax.** Logits ``s [B, C]`` over the candidate labels and a target set ``T`` per image.
For each target ``p``: a softmax over ``{p} + N`` (N = every non-target label); ``prob[p]`` is p's
share, and each non-target ``n`` receives ``softmax_n / |T|``. So a target competes only with the
non-targets, never with the other targets, and the non-target mass is shared out over the groups.

**Filters.**
* ``exact`` (COCO): the top-|T| labels with prob > ``threshold`` (0.5) must equal T exactly.
* ``topk_extra`` (NUS): every target must be among the top ``k`` (7); non-targets in that top-k with
  prob > ``extra_threshold`` (0.1) are added to the image's labels as positives; then parents of every
  label are added through ``parents`` (the reference hard-codes e.g. cat -> animal).

Every decision is a :class:`Decision` (target set, probabilities, accepted, labels added, reason)
that the generation stage writes into its Parquet rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def grouping_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``logits [B, C]``, boolean ``targets [B, C]`` (at least one per row) -> ``prob [B, C]`` in [0, 1].

    Differentiable (the text-encoder tuning backpropagates through it).
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be [B, C]")
    targets = targets.bool()
    n_t = targets.sum(1, keepdim=True)
    if (n_t == 0).any():
        raise ValueError("every image needs at least one target label")
    neg = ~targets
    # For target p: log-sum-exp over {p} + N = logaddexp(s_p, LSE_N).
    neg_logits = logits.masked_fill(targets, float("-inf"))
    lse_n = torch.logsumexp(neg_logits, dim=1, keepdim=True)  # -inf when there is no non-target
    lse_group = torch.logaddexp(logits, lse_n)  # [B, C]: the group denominator of each (target) column
    p_target = torch.exp(logits - lse_group)
    # Non-target n receives sum over targets p of exp(s_n - LSE_p) / |T|.
    group_of_t = lse_group.masked_fill(neg, float("inf"))  # only target columns define groups
    inv = torch.exp(-group_of_t).sum(1, keepdim=True)  # sum_p exp(-LSE_p)
    p_neg = torch.exp(logits) * inv / n_t
    return torch.where(targets, p_target, p_neg)


@dataclass
class Decision:
    """One generated image's filter decision (written per row to Parquet)."""

    targets: list[int]
    probs: list[float]
    accepted: bool
    labels: list[int]  # final positives: targets plus added extras and parents (empty if rejected)
    added: list[int] = field(default_factory=list)
    reason: str = ""

    def row(self, names: list[str]) -> dict:
        return {"target_labels": [names[i] for i in self.targets], "probs": [round(p, 5) for p in self.probs],
                "accepted": self.accepted, "labels": [names[i] for i in self.labels],
                "labels_added": [names[i] for i in self.added], "reason": self.reason}


def filter_exact(prob: torch.Tensor, targets: list[int], threshold: float = 0.5) -> Decision:
    """COCO rule: the top-|T| labels with prob > threshold must be exactly T."""
    p = prob.detach().float().cpu()
    k = len(targets)
    top = torch.argsort(p, descending=True, stable=True)[:k].tolist()
    predicted = [i for i in top if p[i] > threshold]
    ok = sorted(predicted) == sorted(targets)
    if ok:
        reason = "exact: top-|T| above threshold equals the target set"
    else:
        missing = sorted(set(targets) - set(predicted))
        reason = f"exact: targets {missing} not in the top-{k} above {threshold}" if missing else \
            f"exact: non-targets {sorted(set(predicted) - set(targets))} in the top-{k}"
    return Decision(list(targets), p.tolist(), ok, sorted(targets) if ok else [], [], reason)


def filter_topk_extra(prob: torch.Tensor, targets: list[int], k: int = 7, extra_threshold: float = 0.1,
                      parents: dict[int, list[int]] | None = None) -> Decision:
    """NUS rule: all targets within the top-k; confident non-targets there become positives; then parents."""
    p = prob.detach().float().cpu()
    top = torch.argsort(p, descending=True, stable=True)[:k].tolist()
    missing = sorted(set(targets) - set(top))
    if missing:
        return Decision(list(targets), p.tolist(), False, [], [], f"topk: targets {missing} not in the top-{k}")
    extras = [i for i in top if i not in set(targets) and p[i] > extra_threshold]
    labels = set(targets) | set(extras)
    for i in list(labels):
        labels |= set((parents or {}).get(i, []))
    added = sorted(labels - set(targets))
    reason = f"topk: all targets in the top-{k}" + (f"; added {added}" if added else "")
    return Decision(list(targets), p.tolist(), True, sorted(labels), added, reason)
