"""DIG-ZSL's config sections (``method: digzsl``): the CDM, the discriminative class tokens, image
generation and the final classifier. The shared sections come from :mod:`digzsl_ray.config`;
:class:`DigzslRunConfig` is both together, what ``load_run_config`` validates a DIG-ZSL run with.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from digzsl_ray.config import (
    LiveConfig,
    RunConfig,
    Section,
    ServeConfig,
    TrainWorkers,
    check_template,
    measurement,
    runtime,
)


class CDMConfig(Section):
    hidden_dim: int = Field(256, ge=0, le=65536, description="hidden layer of the projection MLP; 0 = linear projection")
    temperature: float = Field(0.05, gt=0.0, le=1.0, description="cosine logits are divided by this")
    epochs: int = Field(15, ge=1, le=100_000, description="training epochs (best epoch by validation accuracy is kept)")
    batch_size: int = Field(128, ge=1, le=65536, description="images per step per worker")
    lr: float = Field(2e-3, gt=0.0, le=10.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0.0, le=10.0, description="AdamW weight decay")
    augment: bool = Field(True, description="random flips and small shifts on training images")
    workers: TrainWorkers = runtime(default_factory=TrainWorkers, description="Ray Train scaling")


class TokensConfig(Section):
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {token} {name}"], min_length=1,
                                 description="DCT prompts; {token} is the placeholder, {name} the class name")
    placeholder: str = Field("<dct-{slug}>", description="placeholder token pattern; {slug} is the class slug")
    init_word: str = Field("", description="word whose embedding initialises every token; empty = last word of the class name")
    batch_size: int = Field(8, ge=1, le=4096, description="images generated per update")
    num_inference_steps: int = Field(10, ge=1, le=1000, description="denoising steps per generated batch (the pipeline's scheduler)")
    grad_steps: int = Field(1, ge=1, le=1000, description="K: gradient flows through the last K denoising steps (and the VAE decoder)")
    guidance_scale: float = Field(3.0, ge=1.0, le=100.0, description="classifier-free guidance scale during learning")
    lr: float = Field(5e-3, gt=0.0, le=10.0, description="AdamW learning rate of the token embedding")
    gamma: float = Field(0.7, gt=0.0, le=1.0, description="early stop when the CDM accuracy on an update's images reaches this")
    patience: int = Field(8, ge=1, le=100_000, description="early stop after this many updates without loss improvement")
    max_updates: int = Field(40, ge=1, le=100_000, description="hard cap on updates per class")
    min_updates: int = Field(3, ge=0, le=100_000, description="updates before early stopping may trigger")
    restrict_to_unseen: bool = Field(True, description="cross-entropy over unseen classes only (False: all classes)")
    gradient_checkpointing: bool = runtime(False, description="recompute UNet activations in the backward pass")
    seed: int = Field(0, ge=0, description="base seed; a class's token is a function of (class, seed)")
    eval_images: int = measurement(24, ge=1, le=100_000, description="fresh images per class for the summary measurement")
    eval_seed: int = measurement(10_000, ge=0, description="seed of the summary images (a separate seed stream from training)")
    pool_min: int = runtime(1, ge=1, le=100_000, description="actors kept alive: a lost actor is replaced while fewer remain")
    pool_max: int = runtime(2, ge=1, le=100_000, description="actors requested (capped by the number of shards); pending GPU "
                                               "actors make the autoscaler add GPU nodes")
    num_gpus: float = runtime(0.0, ge=0.0, le=64, description="GPUs per actor (1 on a GPU cluster)")
    num_cpus: float = runtime(1.0, gt=0.0, le=1024, description="CPUs per actor")
    shard_size: int = runtime(1, ge=1, le=100_000, description="classes handed to an actor at a time")
    max_retries: int = runtime(3, ge=0, le=1000, description="re-dispatches of a shard whose actor died")

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        return [check_template(t, token="t", name="n") for t in v]


class GenerateConfig(Section):
    images_per_class: int = Field(100, ge=1, le=10_000_000, description="N synthetic images per unseen class (before filtering)")
    batch_size: int = runtime(25, ge=1, le=4096, description="images per pipeline call")
    num_inference_steps: int = Field(20, ge=1, le=1000, description="denoising steps (the pipeline's scheduler)")
    guidance_scale: float = Field(3.0, ge=1.0, le=100.0, description="classifier-free guidance scale")
    keep_fraction: float = Field(1.0, gt=0.0, le=1.0, description="keep this top fraction per class by CDM confidence")
    rows_per_shard: int = Field(100, ge=1, le=100_000, description="images per Parquet shard (the unit of resume)")
    actors: int = runtime(2, ge=1, le=100_000, description="generation actors (one pipeline each)")
    num_gpus: float = runtime(0.0, ge=0.0, le=64, description="GPUs per generation actor")
    num_cpus: float = runtime(1.0, gt=0.0, le=1024, description="CPUs per generation actor")
    seed: int = Field(1, ge=0, description="base seed of generated images")
    plain_prompt: bool = Field(True, description="also generate the plain-prompt set for the ablation")
    plain_template: str = Field("a photo of a {name}", description="prompt of the plain-prompt ablation set")

    @field_validator("plain_template")
    @classmethod
    def _plain(cls, v: str) -> str:
        return check_template(v, name="n")


class ClassifierConfig(Section):
    backbone: Literal["clip", "clip-finetune", "resnet18"] = Field(
        "clip", description="frozen CLIP image tower + head, fine-tuned CLIP tower, or torchvision ResNet-18")
    head: Literal["prototypes", "linear", "mlp"] = Field(
        "prototypes", description="head over all classes: 'prototypes' = cosine classifier initialised from the class "
                           "prototypes (starts as CLIP zero-shot; CLIP backbones), 'linear', or 'mlp'")
    epochs: int = Field(10, ge=1, le=100_000, description="maximum epochs")
    patience: int = Field(3, ge=1, le=100_000, description="early stop after this many epochs without validation improvement")
    batch_size: int = Field(128, ge=1, le=65536, description="images per step per worker")
    lr: float = Field(2e-3, gt=0.0, le=10.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0.0, le=10.0, description="AdamW weight decay")
    synthetic_val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="synthetic images held out for validation")
    augment: bool = Field(True, description="random flips and small shifts")
    feature_views: int = Field(3, ge=1, le=64, description="frozen CLIP backbone: views per image whose features are "
                                                            "extracted once and cached (view 0 clean, the others "
                                                            "flipped/shifted when `augment`); epochs train on them")
    distill: float = Field(0.5, ge=0.0, le=1.0, description="weight a of the soft cross-entropy toward the frozen CLIP's "
                                                            "zero-shot probabilities: (1-a) CE + a T^2 KL (He et al. "
                                                            "2023: 0.5; frozen CLIP backbone)")
    distill_temperature: float = Field(2.0, gt=0.0, le=100.0, description="temperature T of the distillation term")
    init_candidate: bool = Field(True, description="the untrained head (CLIP zero-shot for head=prototypes) is a "
                                                    "model-selection candidate: training must beat it on validation "
                                                    "data to be kept")
    clip_filter: bool = Field(False, description="train only on synthetic images whose frozen-CLIP zero-shot "
                                                 "probability of their own class among the unseen classes exceeds "
                                                 "1/#unseen (He et al. 2023); an independent judge, not the CDM "
                                                 "that made the tokens (frozen CLIP backbone)")
    workers: TrainWorkers = runtime(default_factory=TrainWorkers,
                                    description="Ray Train scaling of a trainable backbone; a frozen CLIP trains its "
                                                "head in one task (use_gpu, cpus_per_worker, max_failures apply)")


class DigzslServeConfig(ServeConfig):
    """The endpoint of a DIG-ZSL run: the shared settings plus its Generator deployment
    (``POST /v1/generate``: Stable Diffusion with the learned tokens)."""

    generate_max_n: int = Field(8, ge=1, le=1024, description="most images one /v1/generate request may ask for")
    generate_max_queued: int = Field(16, ge=1, le=100_000, description="/v1/generate requests queued per generation "
                                     "replica before new ones get 429 with Retry-After")
    generate_max_batch_size: int = Field(8, ge=1, le=1024, description="generation requests batched together (each up to generate_max_n images)")
    generate_min_replicas: int = Field(0, ge=0, le=10_000, description="generation replicas kept when idle (0: "
                                       "scale to zero; the first request starts one)")
    generate_max_replicas: int = Field(1, ge=1, le=10_000, description="most generation replicas")
    generate_num_gpus: float = Field(0.0, ge=0.0, le=64, description="GPUs per generation replica")
    generate_num_cpus: float = Field(1.0, gt=0.0, le=1024, description="CPUs per generation replica")
    generate_downscale_delay_s: float = Field(20.0, ge=0.0, le=86_400, description="an idle generation replica is "
                                              "released after this many seconds (Serve's default is 600): on a small "
                                              "node it holds the CPU an add-class job's generation needs")


class DigzslLiveConfig(LiveConfig):
    """Adding classes to a served DIG-ZSL run: the shared job settings plus how the new version's
    classifier is made and the gate it must pass (docs/live.md)."""

    classifier: Literal["retrain-head", "extend"] = Field(
        "retrain-head", description="'retrain-head': the parent's head plus a row for the new class, trained on "
        "frozen features of real seen + every synthetic unseen image (new class included); 'extend': the parent's "
        "head plus one row, the mean direction of the new class's synthetic features (in the input space of the "
        "head's last layer), nothing trained (cheapest)")
    images_per_class: int = Field(0, ge=0, le=1_000_000, description="synthetic images of the new class (0: "
                                  "generate.images_per_class)")
    epochs: int = Field(30, ge=1, le=100_000, description="retrain-head: epochs over the cached features")
    lr: float = Field(5e-3, gt=0.0, le=10.0, description="retrain-head: AdamW learning rate")
    batch_size: int = Field(256, ge=1, le=65536, description="retrain-head: features per step")
    max_drop_points: float = Field(2.0, ge=0.0, le=100.0, description="the gate: a new version may lose at most "
                                   "this many points of mean per-class validation accuracy on the existing classes; "
                                   "otherwise it is rejected with its figures")


class DigzslRunConfig(RunConfig):
    """A DIG-ZSL run: the shared sections plus DIG-ZSL's own."""

    cdm: CDMConfig = Field(default_factory=CDMConfig, description="category discrimination model")
    tokens: TokensConfig = Field(default_factory=TokensConfig, description="discriminative class tokens")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="synthetic image generation")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig, description="final ZSL classifier")
    serve: DigzslServeConfig = Field(default_factory=DigzslServeConfig, description="online endpoint")
    live: DigzslLiveConfig = Field(default_factory=DigzslLiveConfig, description="adding classes to the served run")
