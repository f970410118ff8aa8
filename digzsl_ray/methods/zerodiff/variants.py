"""ZeroDiff's ablation variants: ``base`` (ZeroDiff), ``diffgen`` and ``difftta`` (each ZeroDiff++
addition alone, our reading), ``full`` (ZeroDiff++: both; the headline)."""

BASE, DIFFGEN, DIFFTTA, FULL = "base", "diffgen", "difftta", "full"
VARIANTS = (BASE, DIFFGEN, DIFFTTA, FULL)
TRANSDUCTIVE = (DIFFGEN, DIFFTTA, FULL)  # they pseudo-label the test pool with base

# the floor reported beside them: the frozen CLIP with the run's prototypes, no training (when the run's
# images and a CLIP are at hand); never fitted, so the evaluation's loops run over VARIANTS only
CLIP_ZERO_SHOT = "clip_zero_shot"
REPORTED = (CLIP_ZERO_SHOT,) + VARIANTS
