"""Architectures of the small foundation models (MiniWorld's, or any captioned folder's): small literal configs of the real model classes.

Nothing here is a toy class: the VAE is a diffusers ``AutoencoderKL``, the denoiser a
``UNet2DConditionModel``, the text encoder a transformers ``CLIPTextModel``, the CLIP an open_clip
``CLIP``. Only the sizes are small (32x32 images, 4x8x8 latents).
"""

from __future__ import annotations

from dataclasses import dataclass

VOCAB_SIZE = 49408  # OpenAI CLIP BPE vocabulary, shared by open_clip and the SD tokenizer
BOS_ID, EOS_ID = 49406, 49407


@dataclass
class SDArch:
    """Sizes of the tiny Stable Diffusion."""

    image_size: int = 32  # pixels
    vae_channels: tuple[int, ...] = (32, 64, 64)  # AutoencoderKL block_out_channels (2 downsamples: 32 -> 8)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)  # UNet2DConditionModel block_out_channels
    unet_layers_per_block: int = 1
    unet_head_dim: int = 32  # channels per attention head
    text_hidden: int = 128  # CLIPTextModel hidden size (= UNet cross_attention_dim)
    text_layers: int = 3
    text_heads: int = 4
    max_length: int = 77  # tokenizer model_max_length, as SD 1.5


def vae_config(a: SDArch) -> dict:
    n = len(a.vae_channels)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(a.vae_channels),
        layers_per_block=1,
        latent_channels=a.latent_channels,
        norm_num_groups=16,
        sample_size=a.image_size,
    )


def unet_config(a: SDArch) -> dict:
    n = len(a.unet_channels)
    down = ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"]
    up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1)
    return dict(
        sample_size=a.image_size // 2 ** (len(a.vae_channels) - 1),
        in_channels=a.latent_channels,
        out_channels=a.latent_channels,
        layers_per_block=a.unet_layers_per_block,
        block_out_channels=list(a.unet_channels),
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=a.text_hidden,
        attention_head_dim=[c // a.unet_head_dim for c in a.unet_channels],  # diffusers: = number of heads
        norm_num_groups=32,
    )


def text_config(a: SDArch) -> dict:
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=a.text_hidden,
        intermediate_size=a.text_hidden * 4,
        num_hidden_layers=a.text_layers,
        num_attention_heads=a.text_heads,
        max_position_embeddings=a.max_length,
        hidden_act="quick_gelu",
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        projection_dim=a.text_hidden,
    )


def scheduler_config() -> dict:
    """SD 1.5's noise schedule (scaled-linear betas, 1000 steps, epsilon prediction)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


@dataclass
class ClipArch:
    """open_clip model_cfg of the tiny CLIP (ViT image tower, transformer text tower)."""

    embed_dim: int = 64
    image_size: int = 32
    patch_size: int = 4
    vision_width: int = 128
    vision_layers: int = 4
    vision_head_width: int = 32
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    context_length: int = 32  # captions are short; open_clip reads this for its tokenizer too
    mlp_ratio: float = 2.0

    def model_cfg(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size,
                "layers": self.vision_layers,
                "width": self.vision_width,
                "head_width": self.vision_head_width,
                "patch_size": self.patch_size,
                "mlp_ratio": self.mlp_ratio,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": VOCAB_SIZE,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
                "mlp_ratio": self.mlp_ratio,
            },
        }


# MiniWorld images are normalised like CLIP's (OpenAI mean/std), as real checkpoints are.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
