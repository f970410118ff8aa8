"""Text-encoder tuning on the shipped tiny SD and CLIP: only the text encoder changes, deterministically."""

import open_clip
import pytest
import torch

from digzsl_ray.methods.multilabel.config import TuneConfig
from digzsl_ray.methods.multilabel.tuning import TextEncoderTuner
from digzsl_ray.models.presets import ASSETS, clip_image_size, clip_norm, load_sd_pipeline


def _tuner(lr=1e-3):
    pipe = load_sd_pipeline("miniworld")
    clip, _, _ = open_clip.create_model_and_transforms(f"local-dir:{ASSETS / 'clip'}")
    clip = clip.float()
    tok = open_clip.get_tokenizer(f"local-dir:{ASSETS / 'clip'}")
    labels = ["red circle", "blue square", "faramu"]
    mean, std = clip_norm(clip)
    s = TuneConfig(num_inference_steps=3, grad_steps=1, lr=lr)  # the run's tune section, as the stage passes it
    return TextEncoderTuner(pipe, clip, tok, labels, s, mean, std, clip_image_size(clip)), pipe, clip


def test_one_step_updates_only_the_text_encoder_and_is_deterministic():
    torch.manual_seed(0)
    tuner, pipe, clip = _tuner()
    frozen = {f"unet.{k}": v.clone() for k, v in pipe.unet.state_dict().items()}
    frozen.update({f"vae.{k}": v.clone() for k, v in pipe.vae.state_dict().items()})
    frozen.update({f"clip.{k}": v.clone() for k, v in clip.state_dict().items()})
    te_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    targets = torch.tensor([[True, True, False], [False, False, True]])
    prompts = ["a red circle next to a blue square", "a photo of a faramu"]
    out = tuner.step(prompts, targets, seeds=[1, 2])
    assert out["applied"] and out["loss"] > 0 and 0 < out["target_prob"] < 1
    after = {f"unet.{k}": v for k, v in pipe.unet.state_dict().items()}
    after.update({f"vae.{k}": v for k, v in pipe.vae.state_dict().items()})
    after.update({f"clip.{k}": v for k, v in clip.state_dict().items()})
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    changed = [k for k, v in pipe.text_encoder.state_dict().items() if not torch.equal(te_before[k], v)]
    assert changed
    # same inputs, fresh tuner: the same loss (seeded latents, no other randomness)
    torch.manual_seed(0)
    again, _, _ = _tuner()
    assert again.step(prompts, targets, seeds=[1, 2])["loss"] == out["loss"]


def test_a_tuned_checkpoint_is_exported_only_when_its_gain_exceeds_two_standard_errors():
    from digzsl_ray.methods.multilabel.stages.tune import confirmed

    untuned = [True] * 10 + [False] * 90
    small = [True] * 13 + [False] * 87  # +3 points on 3 discordant sets: SE sqrt(3 - 9/100) = 1.71 -> not confirmed
    c = confirmed(untuned, small)
    assert c["gain_pct"] == 3.0 and c["se_pct"] == pytest.approx((3 - 9 / 100) ** 0.5, abs=1e-3)
    assert not c["confirmed"]
    assert (c["a"], c["a_only"], c["b"], c["b_only"]) == ("tuned", 3, "untuned", 0)  # which side is which, written out
    big = [True] * 30 + [False] * 70  # +20 points on 20 discordant sets -> confirmed
    assert confirmed(untuned, big)["confirmed"] and confirmed(untuned, big)["p_value"] < 0.001
    assert not confirmed(big, untuned)["confirmed"]  # a loss is never exported

