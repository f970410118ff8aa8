"""The multi-label method's ablation variants (issue 14), in table order.

* ``no_synthetic``: contexts and branch trained on real seen images only (zero-shot on unseen labels);
* ``unfiltered``: plus every generated image of the untuned text encoder, labelled with its target set;
* ``filtered``: plus only the images the CLIP discriminator accepted, with the labels it gave;
* ``filtered_tuned``: as ``filtered``, with images of the tuned text encoder (the method);
* ``clip_zero_shot`` (reported, not trained): the frozen CLIP's class-token features at the classifier's
  image size against the run's prototypes, cosine times CLIP's logit scale as each label's score.
"""

NO_SYNTHETIC, UNFILTERED, FILTERED, FILTERED_TUNED = "no_synthetic", "unfiltered", "filtered", "filtered_tuned"
VARIANTS = (NO_SYNTHETIC, UNFILTERED, FILTERED, FILTERED_TUNED)
# the floor reported beside them: the frozen CLIP tower's zero-shot scores with the run's prototypes (no
# training; never fitted, so the training loops run over VARIANTS only)
CLIP_ZERO_SHOT = "clip_zero_shot"
REPORTED = (CLIP_ZERO_SHOT,) + VARIANTS
BASE, TUNED = "base", "tuned"  # the two generated image sets (text encoder untuned / tuned)
SET_OF = {UNFILTERED: BASE, FILTERED: BASE, FILTERED_TUNED: TUNED}


def variants(cfg) -> list[str]:
    """The variants a run trains (without tuning there is no filtered_tuned)."""
    return [v for v in VARIANTS if v != FILTERED_TUNED or cfg.tune.enabled]


def image_sets(cfg) -> list[str]:
    return [BASE, TUNED] if cfg.tune.enabled else [BASE]


def main_variant(cfg) -> str:
    return FILTERED_TUNED if cfg.tune.enabled else FILTERED
