"""DIG-ZSL's ablation variants: the frozen CLIP zero-shot with the run's prototypes (the floor, no
training at all), the CDM alone, a classifier on plain-prompt images, and the method (a classifier on
images of the discriminative class tokens)."""

CLIP_ZERO_SHOT, NO_SYNTHETIC, PLAIN_PROMPT, DCT = "clip_zero_shot", "no_synthetic", "plain_prompt", "dct"
VARIANTS = (CLIP_ZERO_SHOT, NO_SYNTHETIC, PLAIN_PROMPT, DCT)
SYNTHETIC = (DCT, PLAIN_PROMPT)  # the variants with a synthetic image set and a trained classifier


def synthetic_variants(cfg) -> list[str]:
    """The synthetic sets a run generates and trains a classifier on (plain prompts are optional)."""
    return [DCT, PLAIN_PROMPT] if cfg.generate.plain_prompt else [DCT]
