"""Typed configuration: one model per stage, every field documented, YAML files hold overrides only.

``load_config(path, overrides)`` reads a YAML file (or nothing: the defaults run MiniWorld), applies
``--set key=value`` overrides (dotted keys, YAML-typed values) and validates everything. Any
unknown key, wrong type or out-of-range value raises :class:`ConfigError` naming the key, the value
received and what was expected. ``digzsl config show`` prints the resolved config,
``digzsl config explain`` every field with its description.

Defaults are the MiniWorld settings, so a run needs no network and no download; the shipped
``cub.yaml`` etc. override models (SD 1.5, CLIP ViT-L/14) and data paths for real benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config value that is unknown, mistyped or out of range (message names key, value, expectation)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# 1. Data -------------------------------------------------------------------------------------------
class DataConfig(Section):
    format: Literal["miniworld", "digzsl", "xlsa17"] = Field(
        "miniworld",
        description="'miniworld': render the built-in world into `root` when missing; 'digzsl': a dataset in "
        "the project format at `root`; 'xlsa17': att_splits.mat from `splits_dir` with images under `root`.")
    root: str = Field("", description="dataset directory (digzsl/miniworld) or image root (xlsa17); "
                      "empty for miniworld means OUT/data/miniworld")
    dataset: Literal["", "CUB", "AWA2", "SUN", "FLO"] = Field(
        "", description="xlsa17 dataset name; selects the image folder layout")
    splits_dir: str = Field("", description="xlsa17 folder holding att_splits.mat and the class lists")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of each seen class's trainval "
                                "images held out for model selection")
    class_names_file: str = Field("", description="text file with one class name per line in label order; "
                                  "overrides the names of the split files (FLO ships none)")
    val_split: int = Field(1, ge=1, le=3, description="xlsa17 trainclassesK/valclassesK list to use as validation classes")
    check_images: bool = Field(True, description="open every image once before any model work")
    miniworld_seed: int = Field(0, ge=0, description="seed of the rendered MiniWorld (format miniworld)")


# 2. Foundation models ---------------------------------------------------------------------------
class ModelsConfig(Section):
    clip: str = Field("miniworld", description="open_clip model: a preset ('miniworld', 'clip-vit-l14'), an open_clip "
                      "name ('ViT-L-14'), 'local-dir:PATH' or 'hf-hub:ORG/REPO'")
    clip_pretrained: str = Field("", description="open_clip pretrained tag or checkpoint file for a model name "
                                 "(ignored for presets, local-dir: and hf-hub:)")
    sd: str = Field("miniworld", description="Stable Diffusion pipeline: a preset ('miniworld', 'sd15', 'sd21'), "
                    "a local diffusers folder or a hub id")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses CUDA when available")
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="autocast dtype on GPU (CPU always runs fp32)")
    attention: Literal["sdpa", "xformers"] = Field("sdpa", description="attention kernel; xformers needs the [gpu] extra and CUDA")
    torch_threads: int = Field(1, ge=1, description="torch threads per Ray actor/worker (match its num_cpus)")


# 3. Stages -----------------------------------------------------------------------------------------
class PrototypesConfig(Section):
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}."],
        min_length=1, description="prompt ensemble; '{}' is replaced by the class name")


class TrainWorkers(Section):
    num_workers: int = Field(1, ge=1, description="Ray Train workers")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs reserved per worker")
    max_failures: int = Field(2, ge=-1, description="worker failures to recover from (-1: unlimited)")


class CDMConfig(Section):
    hidden_dim: int = Field(256, ge=0, description="hidden layer of the projection MLP; 0 = linear projection")
    temperature: float = Field(0.05, gt=0.0, le=1.0, description="cosine logits are divided by this")
    epochs: int = Field(15, ge=1, description="training epochs (best epoch by validation accuracy is kept)")
    batch_size: int = Field(128, ge=1, description="images per step per worker")
    lr: float = Field(2e-3, gt=0.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay")
    augment: bool = Field(True, description="random flips and small shifts on training images")
    workers: TrainWorkers = Field(default_factory=TrainWorkers, description="Ray Train scaling")


class TokensConfig(Section):
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {token} {name}"], min_length=1,
                                 description="DCT prompts; {token} is the placeholder, {name} the class name")
    placeholder: str = Field("<dct-{slug}>", description="placeholder token pattern; {slug} is the class slug")
    init_word: str = Field("", description="word whose embedding initialises every token; empty = last word of the class name")
    batch_size: int = Field(8, ge=1, description="images generated per update")
    num_inference_steps: int = Field(10, ge=1, description="denoising steps per generated batch (the pipeline's scheduler)")
    grad_steps: int = Field(1, ge=1, description="K: gradient flows through the last K denoising steps (and the VAE decoder)")
    guidance_scale: float = Field(3.0, ge=1.0, description="classifier-free guidance scale during learning")
    lr: float = Field(5e-3, gt=0.0, description="AdamW learning rate of the token embedding")
    gamma: float = Field(0.7, gt=0.0, le=1.0, description="early stop when the CDM accuracy on an update's images reaches this")
    patience: int = Field(8, ge=1, description="early stop after this many updates without loss improvement")
    max_updates: int = Field(40, ge=1, description="hard cap on updates per class")
    min_updates: int = Field(3, ge=0, description="updates before early stopping may trigger")
    restrict_to_unseen: bool = Field(True, description="cross-entropy over unseen classes only (False: all classes)")
    gradient_checkpointing: bool = Field(False, description="recompute UNet activations in the backward pass")
    seed: int = Field(0, ge=0, description="base seed; a class's token is a function of (class, seed)")
    eval_images: int = Field(24, ge=1, description="fresh images per class for the summary measurement")
    eval_seed: int = Field(10_000, ge=0, description="seed of the summary images (a separate seed stream from training)")
    pool_min: int = Field(1, ge=1, description="actors kept alive: a lost actor is replaced while fewer remain")
    pool_max: int = Field(2, ge=1, description="actors requested (capped by the number of shards); pending GPU "
                                               "actors make the autoscaler add GPU nodes")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per actor (1 on a GPU cluster)")
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs per actor")
    shard_size: int = Field(1, ge=1, description="classes handed to an actor at a time")
    max_retries: int = Field(3, ge=0, description="re-dispatches of a shard whose actor died")


class GenerateConfig(Section):
    images_per_class: int = Field(100, ge=1, description="N synthetic images per unseen class (before filtering)")
    batch_size: int = Field(25, ge=1, description="images per pipeline call")
    num_inference_steps: int = Field(20, ge=1, description="denoising steps (the pipeline's scheduler)")
    guidance_scale: float = Field(3.0, ge=1.0, description="classifier-free guidance scale")
    keep_fraction: float = Field(1.0, gt=0.0, le=1.0, description="keep this top fraction per class by CDM confidence")
    rows_per_shard: int = Field(100, ge=1, description="images per Parquet shard (the unit of resume)")
    actors: int = Field(2, ge=1, description="generation actors (one pipeline each)")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per generation actor")
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs per generation actor")
    seed: int = Field(1, ge=0, description="base seed of generated images")
    plain_prompt: bool = Field(True, description="also generate the plain-prompt set for the ablation")
    plain_template: str = Field("a photo of a {name}", description="prompt of the plain-prompt ablation set")


class ClassifierConfig(Section):
    backbone: Literal["clip", "clip-finetune", "resnet18"] = Field(
        "clip", description="frozen CLIP image tower + head, fine-tuned CLIP tower, or torchvision ResNet-18")
    head: Literal["prototypes", "linear", "mlp"] = Field(
        "mlp", description="head over all classes: 'prototypes' = cosine classifier initialised from the class "
                           "prototypes (starts as CLIP zero-shot; CLIP backbones), 'linear', or 'mlp'")
    epochs: int = Field(10, ge=1, description="maximum epochs")
    patience: int = Field(3, ge=1, description="early stop after this many epochs without validation improvement")
    batch_size: int = Field(128, ge=1, description="images per step per worker")
    lr: float = Field(2e-3, gt=0.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay")
    synthetic_val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="synthetic images held out for validation")
    augment: bool = Field(True, description="random flips and small shifts")
    workers: TrainWorkers = Field(default_factory=TrainWorkers, description="Ray Train scaling")


class EvaluateConfig(Section):
    lambda_grid: int = Field(101, ge=3, description="calibration lambdas tried on validation data")
    lambda_max: float = Field(1.0, gt=0.0, description="largest calibration lambda (scores are probabilities)")


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="HTTP host")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    max_batch_size: int = Field(16, ge=1, description="@serve.batch max_batch_size")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, description="@serve.batch batch_wait_timeout_s")
    max_body_bytes: int = Field(4_000_000, ge=1024, description="largest accepted request body")
    max_pixels: int = Field(16_000_000, ge=1, description="largest accepted image (width x height)")
    default_k: int = Field(5, ge=1, description="predictions returned when k is not given")
    min_replicas: int = Field(1, ge=0, description="autoscaling: fewest replicas")
    max_replicas: int = Field(2, ge=1, description="autoscaling: most replicas")
    target_ongoing_requests: float = Field(8.0, gt=0.0, description="autoscaling target per replica")
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs per replica")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per replica")


class RayConfig(Section):
    address: str = Field("", description="cluster address; empty: connect to RAY_ADDRESS or start a local cluster")
    dashboard: bool = Field(True, description="start the Ray dashboard with a local cluster (127.0.0.1, a free port)")
    num_cpus: int = Field(0, ge=0, description="logical CPUs of a local cluster (0: the machine's count; "
                          "DESIGN 9: declare more than the cores so a Ray Data pool and a trainer do not starve)")


class RunConfig(Section):
    name: str = Field("miniworld", description="run name (used in logs and Ray Train run names)")
    seed: int = Field(0, ge=0, description="global seed")
    data: DataConfig = Field(default_factory=DataConfig, description="dataset")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="foundation models")
    prototypes: PrototypesConfig = Field(default_factory=PrototypesConfig, description="class prototypes")
    cdm: CDMConfig = Field(default_factory=CDMConfig, description="category discrimination model")
    tokens: TokensConfig = Field(default_factory=TokensConfig, description="discriminative class tokens")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="synthetic image generation")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig, description="final ZSL classifier")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="evaluation")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="online endpoint")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster")


class PretrainConfig(Section):
    """Foundation-model pretraining from a captioned image folder (``digzsl miniworld pretrain``)."""

    image_size: int = Field(32, ge=8, description="training resolution (images are resized to it)")
    vae_steps: int = Field(2000, ge=0, description="VAE optimisation steps")
    vae_batch: int = Field(32, ge=1, description="VAE batch size")
    vae_lr: float = Field(1e-3, gt=0.0, description="VAE learning rate")
    vae_kl: float = Field(1e-6, ge=0.0, description="KL weight of the VAE loss")
    sd_steps: int = Field(3600, ge=0, description="UNet + text-encoder steps")
    sd_batch: int = Field(64, ge=1, description="UNet batch size")
    sd_lr: float = Field(4e-4, gt=0.0, description="UNet + text-encoder learning rate")
    cfg_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="probability of an empty caption (for classifier-free guidance)")
    clip_steps: int = Field(800, ge=0, description="CLIP steps")
    clip_batch: int = Field(128, ge=2, description="CLIP batch size")
    clip_lr: float = Field(1e-3, gt=0.0, description="CLIP learning rate")
    report_every: int = Field(100, ge=1, description="steps between metric reports")
    checkpoint_every: int = Field(400, ge=1, description="steps between checkpoints (multiple of report_every)")
    seed: int = Field(0, ge=0, description="training seed")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: int = Field(2, ge=1, description="CPUs (and torch threads) per worker")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="autocast dtype on GPU")
    ship_dtype: Literal["fp32", "fp16"] = Field("fp16", description="dtype of the exported weights")


# 4. Loading, overrides and error messages --------------------------------------------------------
def _describe_expected(err: dict) -> str:
    ctx = err.get("ctx") or {}
    t = err["type"]
    if t == "extra_forbidden":
        return "no such key"
    if "expected" in ctx:
        return f"one of {ctx['expected']}"
    for k, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if k in ctx:
            return f"a value {word} {ctx[k]}"
    return err["msg"][0].lower() + err["msg"][1:]


def format_validation_error(e: ValidationError, model: type[BaseModel], source: str = "") -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        val = err.get("input")
        if err["type"] == "extra_forbidden":
            parent = _section_for(model, err["loc"][:-1])
            valid = ", ".join(sorted(parent.model_fields)) if parent else ""
            lines.append(f"unknown key '{key}' (value {val!r}); valid keys here: {valid}")
        else:
            lines.append(f"key '{key}': got {val!r} ({type(val).__name__}); expected {_describe_expected(err)}")
    where = f" in {source}" if source else ""
    return f"invalid config{where}:\n  " + "\n  ".join(lines)


def _section_for(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    cur: Any = model
    for p in loc:
        field = cur.model_fields.get(str(p)) if hasattr(cur, "model_fields") else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        cur = field.annotation
    return cur


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"cdm.lr=0.01"`` -> ``(["cdm", "lr"], 0.01)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set cdm.epochs=5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        cur = data
        for p in path[:-1]:
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: '{p}' is a value, not a section")
            cur = nxt
        cur[path[-1]] = value
    return data


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, or the name of a shipped config ('miniworld', 'cub.yaml')."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    shipped = ", ".join(sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"--config {str(path)!r}: no such file; shipped configs: {shipped}")


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                model: type[BaseModel] = RunConfig) -> Any:
    """Validated config from an optional YAML file plus ``key=value`` overrides."""
    source = ""
    data: dict = {}
    if path:
        p = resolve_config_path(path)
        data = load_yaml(p)
        source = str(p)
    data = apply_overrides(data, list(overrides or []))
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, source)) from None


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def explain(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """One line per field: dotted key, type, default, description."""
    lines = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{key}:  # {f.description}")
            lines += explain(ann, key + ".")
        else:
            default = f.get_default(call_default_factory=True)
            lines.append(f"{key} = {default!r}  # {f.description}")
    return lines
