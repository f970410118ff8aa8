"""The multi-label method's config sections (``method: multilabel``): prompt diversification,
text-encoder tuning, label-set generation, the CLIP filter, the classifier and the metric protocol.
The shared sections come from :mod:`digzsl_ray.config`; :class:`MultilabelRunConfig` is both.

Defaults are MiniWorld's (2 CPU cores); ``configs/coco.yaml`` and ``configs/nuswide.yaml`` hold the
reference's settings for real models on GPUs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from digzsl_ray.config import RunConfig, Section, TrainWorkers, runtime


class PromptsConfig(Section):
    backend: Literal["grammar", "chat"] = Field(
        "grammar", description="'grammar': deterministic template phrases (MiniWorld); 'chat': a chat LLM through "
                               "transformers text generation (`model`), the reference's three-turn painter dialogue")
    model: str = Field("", description="chat backend: a local model folder or a hub id (the reference: "
                                       "meta-llama/Llama-2-7b-chat-hf)")
    phrases_per_pair: int = Field(10, ge=1, le=1000, description="N phrases per unordered pair of unseen labels "
                                                                 "(a label with itself included)")
    temperature: float = Field(0.6, gt=0.0, le=10.0, description="chat backend: sampling temperature")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="chat backend: nucleus sampling")
    max_new_tokens: int = Field(400, ge=1, le=100_000, description="chat backend: tokens per reply")
    seed: int = Field(0, ge=0, description="seed of the phrases (the grammar's draw, the LLM's sampling)")
    actors: int = runtime(1, ge=1, le=100_000, description="chat backend: LLM actors (one model each) over shards of pairs")
    num_gpus: float = runtime(0.0, ge=0.0, le=64, description="chat backend: GPUs per actor (1 on a GPU cluster)")
    num_cpus: float = runtime(1.0, gt=0.0, le=1024, description="chat backend: CPUs per actor")
    pairs_per_batch: int = runtime(8, ge=1, le=100_000, description="chat backend: pairs handed to an actor at a time")


class GenerateConfig(Section):
    images_per_label: int = Field(4, ge=1, le=10_000_000, description="quota per unseen label: accepted images "
                                  "whose target set holds it (the reference: 200), or generated ones with "
                                  "quota_counts: generated")
    quota_counts: Literal["accepted", "generated"] = Field(
        "accepted", description="'accepted': generate in rounds until each label is held by images_per_label images "
        "the filter accepted (the reference), within max_rows / max_rounds; 'generated': one round holding each "
        "label images_per_label times, whatever the filter says")
    max_rows: int = Field(300, ge=0, le=100_000_000, description="accepted quota: most generated images per image set "
                          "(0: no limit; the reference has none); labels the filter rarely accepts stay short")
    max_rounds: int = Field(6, ge=1, le=1000, description="accepted quota: most generation rounds per image set")
    set_size: int = Field(2, ge=1, le=16, description="labels drawn per target set (duplicates removed)")
    redraw_single: bool = Field(True, description="a set that collapsed to one label gets one more draw (COCO); "
                                "False keeps single-label sets (NUS)")
    confusions: list[list[str]] = Field(default_factory=list, description="easy-confusion pairs never drawn together "
                                        "(COCO's: skateboard+snowboard, elephant+cow, sink+cup, scissors+knife)")
    negative_prompt: str = Field("", description="negative prompt of classifier-free guidance (real configs: the "
                                 "reference's list)")
    image_size: int = Field(0, ge=0, le=4096, description="generated image side in pixels (0: the pipeline's native "
                            "size, 512 for SD 1.5); miniworld_multilabel sets MiniWorld's 64 px scenes")
    num_inference_steps: int = Field(10, ge=1, le=1000, description="denoising steps")
    guidance_scale: float = Field(3.0, ge=1.0, le=100.0, description="classifier-free guidance scale")
    seed: int = Field(1, ge=0, description="seed of the label sets, prompts and latents")
    rows_per_shard: int = Field(64, ge=1, le=100_000, description="images per Parquet shard (the unit of resume)")
    batch_size: int = runtime(16, ge=1, le=4096, description="images per pipeline call")
    actors: int = runtime(1, ge=1, le=100_000, description="generation actors (one pipeline each)")
    num_gpus: float = runtime(0.0, ge=0.0, le=64, description="GPUs per generation actor")
    num_cpus: float = runtime(1.0, gt=0.0, le=1024, description="CPUs per generation actor")

    @field_validator("confusions")
    @classmethod
    def _pairs(cls, v: list[list[str]]) -> list[list[str]]:
        for pair in v:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"pairs of two different label names, got {pair!r}")
        return v


class FilterConfig(Section):
    policy: Literal["exact", "topk_extra", "none"] = Field(
        "exact", description="'exact' (COCO): the top-|T| labels above `threshold` must equal the target set; "
                             "'topk_extra' (NUS): every target in the top `top_k`, confident extras added as labels; "
                             "'none': accept everything (decisions are still recorded)")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="exact: probability a target must exceed")
    top_k: int = Field(7, ge=1, le=100_000, description="topk_extra: targets must be among the top k")
    extra_threshold: float = Field(0.1, gt=0.0, lt=1.0, description="topk_extra: non-targets in the top k above this "
                                   "become labels")
    parents: dict[str, list[str]] = Field(default_factory=dict, description="topk_extra: label -> parent labels added "
                                          "with it (the reference hard-codes e.g. cat -> animal)")
    image_size: int = Field(0, ge=0, le=4096, description="CLIP input side for the discriminator (0: CLIP's native "
                            "size; a ViT's positional grid is resized for others, a multiple of its patch size)")
    batch_size: int = runtime(64, ge=1, le=4096, description="images per discriminator call")
    actors: int = runtime(1, ge=1, le=100_000, description="filter actors (one CLIP each)")
    num_gpus: float = runtime(0.0, ge=0.0, le=64, description="GPUs per filter actor")
    num_cpus: float = runtime(1.0, gt=0.0, le=1024, description="CPUs per filter actor")


class TuneConfig(Section):
    enabled: bool = Field(True, description="tune the text encoder (False: the filtered_tuned variant is skipped)")
    steps: int = Field(60, ge=0, le=1_000_000, description="optimisation steps (each worker generates its own batch)")
    batch_size: int = Field(4, ge=1, le=4096, description="label sets per step per worker")
    num_inference_steps: int = Field(10, ge=1, le=1000, description="denoising steps of the tuning images")
    grad_steps: int = Field(10, ge=1, le=1000, description="K: gradient through the last K denoising steps and the "
                            "VAE decoder (the reference and the default: all steps; which objects appear is decided "
                            "at high noise)")
    guidance_scale: float = Field(3.0, ge=1.0, le=100.0, description="classifier-free guidance scale")
    lr: float = Field(2e-5, gt=0.0, le=10.0, description="AdamW learning rate of the text encoder (the reference, "
                      "for SD 2: 7e-8 over 4,000-26,000 one-image steps; MiniWorld's 60 steps of 4 images take "
                      "2e-5)")
    weight_decay: float = Field(1e-3, ge=0.0, le=10.0, description="AdamW weight decay")
    gamma_neg: float = Field(4.0, ge=0.0, le=100.0, description="asymmetric loss: negative focusing")
    gamma_pos: float = Field(0.0, ge=0.0, le=100.0, description="asymmetric loss: positive focusing")
    clip: float = Field(0.05, ge=0.0, lt=1.0, description="asymmetric loss: negative probability shift")
    eval_every: int = Field(30, ge=1, le=1_000_000, description="steps between validations and checkpoints")
    val_sets: int = Field(256, ge=1, le=100_000, description="validation label sets (a seed stream of their own; "
                          "never test images): the checkpoint with the highest filter acceptance on them is exported")
    confirm_sets: int = Field(256, ge=0, le=100_000, description="independent label sets the chosen checkpoint is "
                              "confirmed on against the untuned encoder: exported only when its acceptance gain "
                              "exceeds two standard errors (0: not checked)")
    seed: int = Field(0, ge=0, description="seed of the tuning label sets and latents")
    gradient_checkpointing: bool = runtime(False, description="recompute UNet activations in the backward pass")
    workers: TrainWorkers = runtime(default_factory=TrainWorkers, description="Ray Train scaling (data parallel: "
                                    "each worker generates its own images)")


class ClassifierConfig(Section):
    n_ctx: int = Field(16, ge=1, le=64, description="head 'contexts': learned context tokens of the positive and "
                       "of the negative prompt (DualCoOp; shared across classes)")
    ctx_init: str = Field("", max_length=200, description="head 'contexts': CoOp's initialisation, the positive context's last tokens "
                          "start as this prompt's words (e.g. 'a photo of a'); empty: random (DualCoOp's default)")
    head: Literal["prototypes", "contexts"] = Field(
        "prototypes", description="the text side: 'prototypes' (one weight vector per label started at its "
        "prototype and a learned threshold per label: the frozen CLIP's zero-shot ranking before any step, He et "
        "al. 2023) or 'contexts' (DualCoOp's learned positive/negative prompt contexts, the reference's)")
    regions: Literal["class_token", "all"] = Field(
        "class_token", description="image features scored: the class token (CLIP's image embedding) or the class "
        "token and every patch token with DualCoOp's softmax aggregation")
    negative: Literal["prompt", "bias"] = Field(
        "prompt", description="head 'contexts' only: the negative side is a learned prompt context (DualCoOp) or "
        "one learned cosine threshold")
    bias_init: float = Field(0.3, ge=-1.0, le=1.0, description="starting cosine threshold of the learned "
                             "thresholds (head 'prototypes', negative 'bias')")
    prototype_reg: float = Field(0.0, ge=0.0, le=1e6, description="weight of the pull of every label's positive text "
                                 "feature toward its prototype, mean (1 - cos) over all labels (KgCoOp for "
                                 "contexts; a return-to-start term for the prototype head); 0: off")
    image_size: int = Field(0, ge=0, le=4096, description="CLIP input side (0: CLIP's native size; others resize a "
                            "ViT's positional grid and must be a multiple of its patch size)")
    branch: bool = Field(True, description="add the zero-initialised global feature-fusion branch (the method); "
                         "False trains the contexts alone")
    epochs: int = Field(8, ge=1, le=100_000, description="maximum epochs (each: a pass over real seen images, "
                        "then one over synthetic images)")
    patience: int = Field(3, ge=1, le=100_000, description="early stop after this many epochs without validation "
                          "improvement")
    batch_size: int = Field(32, ge=1, le=65536, description="images per step per worker")
    lr: float = Field(2e-3, gt=0.0, le=10.0, description="AdamW learning rate of the contexts")
    branch_lr: float = Field(1e-4, gt=0.0, le=10.0, description="learning rate of the fusion branches (the reference: 1e-4)")
    branch_optimizer: Literal["sgd", "adamw"] = Field("sgd", description="optimiser of the fusion branches: 'sgd' "
                                                     "(momentum 0.9, the reference's) or 'adamw'")
    weight_decay: float = Field(1e-4, ge=0.0, le=10.0, description="AdamW weight decay")
    gamma_neg: float = Field(2.0, ge=0.0, le=100.0, description="asymmetric loss: negative focusing (reference: 2)")
    gamma_pos: float = Field(1.0, ge=0.0, le=100.0, description="asymmetric loss: positive focusing (reference: 1)")
    clip: float = Field(0.05, ge=0.0, lt=1.0, description="asymmetric loss: negative probability shift")
    logit_scale: float = Field(20.0, gt=0.0, le=1000.0, description="region logit scale (DualCoOp: 20)")
    agg_scale: float = Field(5.0, gt=0.0, le=1000.0, description="scale of the aggregated logits (DualCoOp: 5)")
    max_classes_per_batch: int = Field(0, ge=0, le=100_000, description="class subsampling for large label spaces: "
                                       "a batch's positives plus random negatives up to this many (0: all classes)")
    synthetic_val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="synthetic images held out for validation")
    augment: bool = Field(True, description="random flips of training images")
    workers: TrainWorkers = runtime(default_factory=TrainWorkers, description="Ray Train scaling")


class MetricsConfig(Section):
    preset: Literal["dualcoop", "biam", "lesa", "sdl"] = Field(
        "dualcoop", description="metric protocol (digzsl_ray.metrics.multilabel): label coding, images without "
                                "labels, classes without positives, tie order of a peer codebase")
    threshold_grid: int = Field(19, ge=3, le=10_000, description="thresholds tried on validation data for the "
                                "served decision rule (probability > threshold)")


class MultilabelRunConfig(RunConfig):
    """A multi-label run: the shared sections plus the method's own."""

    method: str = Field("multilabel", description="the method whose stages the run executes")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="prompt diversification")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="discriminative text-encoder tuning")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="label-set image generation")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="the CLIP discriminator's filter")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig, description="multi-label classifier")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="multi-label metric protocol")
