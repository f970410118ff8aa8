"""Spuriousness metrics, OUR definitions (ZeroDiff++ names two, for seen and unseen classes, without
publishing them; ZeroDiff's ICLR review calls its Fig. 2 quantity delta_adv). See docs/zerodiff.md.

Measured with the DFG's semantic-view critic D_x0, whose score is a learned "how real is x for
class a" (higher = more real):

* ``spurious_seen`` = mean D(real training features) - mean D(real held-out features of the same
  seen classes): how much the critic has memorised its training set (ZeroDiff's overfitting probe;
  it grows when the generator learns spurious, training-set-only correlations).
* ``spurious_unseen`` = mean D(generated unseen features) - mean D(real unseen features): how much
  more "real" the critic finds the generator's unseen features than the real ones: features
  disconnected from the real unseen distribution score high.
* Both also divided by the standard deviation of D on the training features (``*_z``), since a
  WGAN critic's scale drifts.
* ``semantic_error_unseen`` / ``semantic_error_seen``: mean L1 between the V2S decoder's semantic
  regression of real held-out features and their class semantics.

Held-out data: the validation fold's held-out seen images and its pseudo-unseen classes' images;
in the final fold the test images (labelled ``measurement only``: never used for any choice).
"""

from __future__ import annotations

import numpy as np
import torch


def _mean(v: torch.Tensor) -> float:
    return float(v.mean()) if len(v) else float("nan")


@torch.no_grad()
def spuriousness(dfg, att: torch.Tensor, train: tuple, heldout_seen: tuple, gen_unseen: tuple,
                 real_unseen: tuple) -> dict:
    """Each argument a pair (features [N, D] array, labels [N]); ``att`` [C, A] semantics."""
    def score(pair):
        x, y = pair
        if not len(x):
            return torch.zeros(0)
        return dfg.critic_score(torch.as_tensor(x), att[torch.as_tensor(y)])

    def sem_err(pair):
        x, y = pair
        if not len(x):
            return float("nan")
        dfg.dec.eval()
        pred = dfg.dec(torch.as_tensor(x).to(dfg.device))[0].cpu()
        return float((pred - att[torch.as_tensor(y)]).abs().mean())

    s_tr, s_ho, s_gu, s_ru = (score(p) for p in (train, heldout_seen, gen_unseen, real_unseen))
    sd = float(s_tr.std()) if len(s_tr) > 1 else float("nan")
    seen = _mean(s_tr) - _mean(s_ho)
    unseen = _mean(s_gu) - _mean(s_ru)
    out = {"spurious_seen": seen, "spurious_unseen": unseen,
           "spurious_seen_z": seen / sd if sd and np.isfinite(sd) else float("nan"),
           "spurious_unseen_z": unseen / sd if sd and np.isfinite(sd) else float("nan"),
           "critic_train": _mean(s_tr), "critic_heldout_seen": _mean(s_ho), "critic_generated_unseen": _mean(s_gu),
           "critic_real_unseen": _mean(s_ru),
           "semantic_error_seen": sem_err(heldout_seen), "semantic_error_unseen": sem_err(real_unseen)}
    return {k: round(v, 5) if np.isfinite(v) else None for k, v in out.items()}
