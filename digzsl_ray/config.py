"""Typed configuration of the shared core: sections every method uses, and the loader.

A run config is the shared sections below (``method``, ``data``, ``models``, ``prototypes``,
``evaluate``, ``serve``, ``live``, ``ray``, ``tracking``) plus the sections of the method it names
(each method's config module; see :mod:`digzsl_ray.methods`). Every field
is documented; YAML files hold overrides only.

``read_config_data(path, overrides)`` reads a YAML file (or nothing: the defaults run MiniWorld)
and applies ``--set key=value`` overrides (dotted keys, YAML-typed values);
``validate_config(data, model)`` checks everything. Any unknown key, wrong type or out-of-range
value raises :class:`ConfigError` naming the key, the value received (cut to a few hundred
characters) and what was expected. YAML is read with YAML 1.2 scalars (``1:30`` is a string, not
90; ``yes`` is a string, not true; ``010`` is ten), duplicate keys are errors, files over
``MAX_CONFIG_BYTES`` are refused before parsing, integers are bounded (``MAX_INT`` unless a field
says less), booleans are never integers and floats are finite.

Fields marked ``affects_outputs=False`` (scaling, threads, devices) are left out of the stage
fingerprints (:mod:`digzsl_ray.stages.contract`); every other field of a section a stage depends
on is in, so a new setting invalidates stale outputs by default.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticUndefined

from digzsl_ray.errors import UserError, short

CONFIG_DIR = Path(__file__).parent / "configs"
MAX_CONFIG_BYTES = 1_000_000
MAX_INT = 2**31 - 1  # seeds and counts: what numpy, torch and Ray all take without overflow


class ConfigError(UserError):
    """A config value that is unknown, mistyped or out of range (message names key, value, expectation)."""


def runtime(default: Any = PydanticUndefined, **kwargs) -> Any:
    """A field that changes how a stage runs (workers, threads, devices), never what it produces:
    left out of stage fingerprints, so changing it resumes instead of redoing work."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {}, affects_outputs=False)
    return Field(default, json_schema_extra=extra, **kwargs)


def measurement(default: Any = PydanticUndefined, **kwargs) -> Any:
    """A field that only changes how a stage *measures* its outputs (fresh-seed evaluation), never
    the outputs other stages consume: left out of stage fingerprints like :func:`runtime`; the
    measurement records the value it used."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {}, affects_outputs=False, measurement=True)
    return Field(default, json_schema_extra=extra, **kwargs)


def affects_outputs(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return not (isinstance(extra, dict) and extra.get("affects_outputs") is False)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_as_ints_and_bounded(cls, value, info):
        """``epochs: true`` is an error (not 1); integers above ``MAX_INT`` are errors (not overflows);
        text values hold no control characters (a NUL in a path, a newline in a name)."""
        ann = cls.model_fields[info.field_name].annotation
        if isinstance(value, (bytes, bytearray)):
            raise ValueError("text, not binary data")
        for text in (value if isinstance(value, list) else [value]):
            if isinstance(text, (bytes, bytearray)):
                raise ValueError("text, not binary data")
            if isinstance(text, str):
                bad = next((c for c in text if ord(c) < 32 or 127 <= ord(c) < 160), None)
                if bad is not None:
                    raise ValueError(f"text without control characters (found U+{ord(bad):04X})")
        if ann is int or ann is float:
            if isinstance(value, bool):
                raise ValueError(f"a number, not {str(value).lower()}")
            if isinstance(value, int) and abs(value) > MAX_INT:
                raise ValueError(f"a value <= {MAX_INT}")
        return value


# 1. Data -------------------------------------------------------------------------------------------
class DataConfig(Section):
    format: Literal["miniworld", "miniworld-multilabel", "digzsl", "xlsa17", "imagefolder", "coco", "nuswide",
                    "nuswide-dualcoop"] = Field(
        "miniworld",
        description="'miniworld': render the built-in world into `root` when missing ('miniworld-multilabel': "
        "its multi-label scenes); 'digzsl': a dataset in "
        "the project format at `root`; 'xlsa17': att_splits.mat from `splits_dir` with images under `root`; "
        "'imagefolder': one folder of images per class under `root` (torchvision ImageFolder / Hugging Face "
        "imagefolder layout), unseen classes from `unseen_classes` or `unseen_classes_file`, test images from "
        "`test_root` or held out by `test_fraction`; "
        "multi-label: 'coco' (instances JSONs in `annotations`, Bansal class lists, images under `root`), "
        "'nuswide' (the official release in `annotations`) or 'nuswide-dualcoop' (DualCoOp's formatted files "
        "in `annotations`), images under `root`")
    root: str = Field("", description="dataset directory (digzsl/miniworld), image root (xlsa17, coco, nuswide) or "
                      "the folder of class folders (imagefolder); empty for miniworld means OUT/data/miniworld")
    annotations: str = Field("", description="coco: folder of instances_{train,val}2014.json; nuswide: the "
                             "release root (Concepts81.txt, NUS_WID_Tags/, AllLabels/, ImageList/); "
                             "nuswide-dualcoop: the root holding annotations/Tag_all and annotations/zsl")
    seen_classes_file: str = Field("", description="coco: seen class list (Bansal's mscoco_seen_classes.json "
                                   "or one name per line)")
    unseen_classes_file: str = Field("", description="coco: unseen class list (mscoco_unseen_classes.json); "
                                     "imagefolder: the unseen classes, a JSON list or one name per line (folder "
                                     "names or cleaned class names), instead of `unseen_classes`")
    unseen_classes: list[str] = Field(default_factory=list, description="imagefolder: the unseen classes, by folder "
                                      "name or cleaned class name ('001.Black_footed_Albatross' or 'black footed "
                                      "albatross'); all their images are test images")
    test_root: str = Field("", description="imagefolder: a second folder with the same class folders holding the "
                           "test images (test_seen, and test_unseen with the unseen classes' images of `root`); "
                           "empty: hold out `test_fraction` of each seen class instead")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="imagefolder without `test_root`: fraction of each "
                                 "seen class's images held out as test_seen (at least one per class, one kept)")
    test_seed: int = Field(0, ge=0, description="imagefolder without `test_root`: seed of the held-out test draw")
    concepts_file: str = Field("", description="nuswide-dualcoop: optional official Concepts81.txt to check "
                               "the unseen names against")
    keep_unlabelled: bool = Field(False, description="nuswide: keep test images without any label (LESA/BiAM "
                                  "evaluate them) in the split 'test_unlabelled'")
    dataset: Literal["", "CUB", "AWA2", "SUN", "FLO"] = Field(
        "", description="xlsa17 dataset name; selects the image folder layout")
    splits_dir: str = Field("", description="xlsa17 folder holding att_splits.mat and the class lists")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of each seen class's trainval "
                                "images held out for model selection")
    class_names_file: str = Field("", description="text file with one class name per line in label order; "
                                  "overrides the names of the split files (FLO ships none) or, for imagefolder, "
                                  "the folder names (in sorted folder order)")
    val_seed: int = Field(0, ge=0, description="seed of the validation draw (which trainval images are held out)")
    val_split: int = Field(1, ge=1, le=3, description="xlsa17 trainclassesK/valclassesK list to use as validation classes")
    check_images: bool = runtime(True, description="open every image once before any model work")
    exclude_classes: list[str] = Field(default_factory=list, description="class names left out of the run entirely "
                                       "(all splits; single-label data): e.g. a class to add later to the live "
                                       "service with `digzsl add-class`")
    miniworld_seed: int = Field(0, ge=0, description="seed of the rendered MiniWorld (format miniworld)")


# 2. Foundation models ---------------------------------------------------------------------------
class ModelsConfig(Section):
    clip: str = Field("miniworld", description="open_clip model: a preset ('miniworld', 'clip-vit-l14'), an open_clip "
                      "name ('ViT-L-14'), 'local-dir:PATH' or 'hf-hub:ORG/REPO'")
    clip_pretrained: str = Field("", description="open_clip pretrained tag or checkpoint file for a model name "
                                 "(ignored for presets, local-dir: and hf-hub:)")
    sd: str = Field("miniworld", description="Stable Diffusion pipeline: a preset ('miniworld', 'sd15', 'sd21'), "
                    "a local diffusers folder or a hub id")
    device: Literal["auto", "cpu", "cuda"] = runtime("auto", description="'auto' uses CUDA when available")
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="autocast dtype on GPU (CPU always runs fp32)")
    attention: Literal["sdpa", "xformers"] = runtime("sdpa", description="attention kernel; xformers needs the [gpu] extra and CUDA")
    torch_threads: int = runtime(1, ge=1, le=1024, description="torch threads per Ray actor/worker (match its num_cpus)")


# 3. Stages -----------------------------------------------------------------------------------------
def check_template(template: str, **fields) -> str:
    """``template`` formats with exactly the given fields (``""`` key: one positional ``{}``)."""
    args = (fields.pop(""),) if "" in fields else ()
    try:
        template.format(*args, **fields)
    except (KeyError, IndexError, ValueError) as e:
        want = " and ".join(["'{}'"] * bool(args) + [f"'{{{k}}}'" for k in fields])
        raise ValueError(f"a template using only {want} ({type(e).__name__}: {short(str(e), 60)})") from None
    return template


class PrototypesConfig(Section):
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}."],
        min_length=1, max_length=1000, description="prompt ensemble; '{}' is replaced by the class name")

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        return [check_template(t, **{"": "x"}) for t in v]


class TrainWorkers(Section):
    num_workers: int = Field(1, ge=1, le=4096, description="Ray Train workers")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: int = Field(1, ge=1, le=1024, description="CPUs reserved per worker")
    max_failures: int = Field(2, ge=-1, le=1000, description="worker failures to recover from (-1: unlimited)")


class EvaluateConfig(Section):
    lambda_grid: int = Field(101, ge=3, le=100_000, description="calibration lambdas tried on validation data")
    lambda_max: float = Field(1.0, gt=0.0, le=1.0, description="largest calibration lambda (scores are probabilities)")
    calibration: Literal["synthetic", "valclass"] = Field(
        "synthetic", description="how the headline lambda is chosen on validation data: 'synthetic' = held-out seen "
        "images + held-out synthetic unseen images; 'valclass' = the validation-class protocol (seen classes held "
        "out as pseudo-unseen, real images only; see docs/DESIGN.md). Both are always reported")


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="HTTP host")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    max_batch_size: int = Field(16, ge=1, le=4096, description="@serve.batch max_batch_size")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=10.0, description="@serve.batch batch_wait_timeout_s")
    max_body_bytes: int = Field(4_000_000, ge=1024, le=1_000_000_000, description="largest accepted request body")
    max_pixels: int = Field(16_000_000, ge=1, le=1_000_000_000, description="largest accepted image (width x height)")
    default_k: int = Field(5, ge=1, le=100_000, description="predictions returned when k is not given")
    min_replicas: int = Field(1, ge=0, le=10_000, description="autoscaling: fewest replicas")
    max_replicas: int = Field(2, ge=1, le=10_000, description="autoscaling: most replicas")
    target_ongoing_requests: float = Field(8.0, gt=0.0, le=100_000, description="autoscaling target per replica")
    num_cpus: float = Field(1.0, gt=0.0, le=1024, description="CPUs per replica")
    num_gpus: float = Field(0.0, ge=0.0, le=64, description="GPUs per replica")
    body_timeout_s: float = Field(10.0, gt=0.0, le=3600.0, description="a request body must arrive whole within this "
                                  "(slow or short bodies get 408 instead of holding a request slot)")
    max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576, description="largest accepted request headers (431)")
    max_body_reads_per_client: int = Field(32, ge=1, le=100_000, description="request bodies one client address may "
                                           "be sending at once per Ingress replica; more answer 429 at once, so slow "
                                           "senders cannot fill the request slots (body_timeout_s cuts each one)")
    max_jpeg_scans: int = Field(64, ge=1, le=10_000, description="JPEGs with more scans are refused before decoding "
                                "(a progressive JPEG has about 10; each scan costs a full decoding pass)")
    request_timeout_s: float = Field(60.0, gt=0.0, le=86_400.0, description="end-to-end HTTP request timeout of "
                                     "the proxy started by `digzsl serve` (serve deploy: http_options in the Serve config)")
    docs: bool = Field(False, description="serve /docs, /redoc and /openapi.json (off: they describe the API to anyone)")
    api_token_file: str = Field("", description="file holding the bearer token that the mutating routes (POST "
                                "/v1/classes, /v1/models/{id}/activate) and /v1/generate require; the environment "
                                "variable DIGZSL_API_TOKEN_FILE overrides it. Empty and unset: those routes answer 403")
    protect_classify: bool = Field(False, description="also require the bearer token on /v1/classify and the read "
                                   "routes (/v1/classes, /v1/models, /v1/jobs)")
    model_in_ingress: bool = Field(False, description="hold the model in the ingress replicas (batched there; they "
                                   "take serve.num_cpus/num_gpus and autoscale) instead of a separate Classifier "
                                   "deployment: one hop per request fewer (benchmarks/README.md, serve)")
    graceful_shutdown_s: float = Field(10.0, ge=0.5, le=3600.0, description="a stopping replica waits at most this "
                                       "long for its requests in flight (Ray Serve's default is 20 s per deployment; a "
                                       "stop must end within Kubernetes' default 30 s grace period)")
    direct_ingress: bool = Field(False, description="`digzsl serve`: start the local cluster with Ray Serve's "
                                 "direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS=1): the ingress replicas listen on "
                                 "their own HTTP ports (from 30000) for a load balancer, no proxy hop; pair with "
                                 "model_in_ingress. A cluster you join must be started with the variable on every node")


class LiveConfig(Section):
    """Adding classes to a served run (`POST /v1/classes`, `digzsl add-class`): docs/live.md. What the
    job queue needs; a method that can add classes extends it with its own settings."""

    activate: bool = Field(True, description="switch the service to a version that passes the method's gate")
    max_name_length: int = Field(64, ge=1, le=1000, description="longest accepted class name")
    queue_size: int = Field(8, ge=1, le=10_000, description="add-class jobs waiting at most (more: 429)")


class RayConfig(Section):
    address: str = Field("", description="cluster address; empty: connect to RAY_ADDRESS or start a local cluster")
    dashboard: bool = Field(True, description="start the Ray dashboard with a local cluster (127.0.0.1, a free port)")
    num_cpus: int = Field(0, ge=0, le=100_000, description="logical CPUs of a local cluster (0: the machine's count; "
                          "docs/DESIGN.md section 7: declare more than the cores so a Ray Data pool and a trainer do not starve)")
    keep_checkpoints: bool = Field(False, description="keep the Ray Train checkpoints of finished stages under OUT/ray "
                                   "(false: removed once a stage's outputs are written; resume needs them only while "
                                   "it runs)")


class TrackingConfig(Section):
    """Experiment tracking of `digzsl run` (docs/tracking.md): logged from the driver after each stage."""

    backend: Literal["none", "mlflow", "tensorboard"] = Field(
        "none", description="'none': nothing tracked; 'mlflow': one MLflow run per `digzsl run` with a nested run "
        "per stage and per variant (needs the [tracking] extra); 'tensorboard': event files under log_dir")
    uri: str = Field("", description="mlflow: tracking URI (http://host:5000 for a server); empty: a local store "
                     "sqlite:///OUT/mlflow.db with artifacts in OUT/mlartifacts (offline; MLFLOW_TRACKING_URI is not read)")
    experiment: str = Field("", max_length=500, description="mlflow: experiment name; empty: the run name (`name`)")
    log_dir: str = Field("", description="tensorboard: folder of the event files; empty: OUT/tensorboard")
    artifacts: bool = Field(True, description="mlflow: log metrics.json, report.html and config.yaml as artifacts "
                            "of the pipeline run")

class RunConfig(Section):
    """The shared sections of every run config; a method's config class adds its own sections."""

    method: str = Field("digzsl", description="the method whose stages the run executes (registered methods: "
                        "see `digzsl config explain`; digzsl = DIG-ZSL)")
    name: str = Field("miniworld", max_length=200, description="run name (used in logs and Ray Train run names)")
    seed: int = Field(0, ge=0, description="global seed")
    data: DataConfig = Field(default_factory=DataConfig, description="dataset")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="foundation models")
    prototypes: PrototypesConfig = Field(default_factory=PrototypesConfig, description="class prototypes")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="evaluation")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="online endpoint")
    live: LiveConfig = Field(default_factory=LiveConfig, description="adding classes to the served run")
    ray: RayConfig = runtime(default_factory=RayConfig, description="Ray cluster")
    tracking: TrackingConfig = runtime(default_factory=TrackingConfig, description="experiment tracking "
                                       "(never part of a stage's fingerprint: switching it on redoes nothing)")


class PretrainConfig(Section):
    """Foundation-model pretraining from a captioned image folder (``digzsl pretrain``)."""

    image_size: int = Field(32, ge=8, le=4096, description="training resolution (images are resized to it)")
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
    vae_decoder_steps: int = Field(4000, ge=0, description="steps of the last phase: the VAE decoder alone "
                                   "fine-tuned on the frozen encoder (the latent space, hence the UNet, is unchanged)")
    vae_decoder_lr: float = Field(1e-3, gt=0.0, description="learning rate of the VAE-decoder phase")
    report_every: int = Field(100, ge=1, description="steps between metric reports")
    checkpoint_every: int = Field(400, ge=1, description="steps between checkpoints (multiple of report_every)")
    seed: int = Field(0, ge=0, description="training seed")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: int = Field(2, ge=1, description="CPUs (and torch threads) per worker")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="autocast dtype on GPU")
    ship_dtype: Literal["fp32", "fp16"] = Field("fp16", description="dtype of the exported weights")


# 4. Reading YAML: YAML 1.2 scalars, no duplicate keys, bounded size ------------------------------
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars and duplicate keys refused.

    PyYAML implements YAML 1.1, where ``1:30`` is the integer 90 (base 60), ``yes``/``on`` are true
    and ``010`` is eight. Config files mean what a YAML 1.2 reader (and a person) reads.
    """


_Loader.yaml_implicit_resolvers = {  # YAML 1.1's bool/int/float/timestamp/value rules are not YAML 1.2's
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                                                   "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp",
                                                   "tag:yaml.org,2002:value")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _construct_int(loader, node):
    v = loader.construct_scalar(node)
    if v.startswith("0o"):
        return int(v[2:], 8)
    if v.startswith("0x"):
        return int(v[2:], 16)
    return int(v, 10)


def _construct_mapping(loader, node, deep=False):
    """A mapping whose keys are unique as written (merge keys ``<<:`` may bring keys that the
    mapping then overrides: that is what merging is for, not a duplicate)."""
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
        except TypeError:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: a mapping key must be a plain value, "
                              f"got {short(key, 60)}") from None
        if dup:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key {short(key, 60)} appears twice in one "
                              f"mapping (first on line {seen[key] + 1}); keep one")
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({short(str(e), 300)})") from None
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a scalar an explicit tag cannot construct (!!int 0b101)
        raise ConfigError(f"{where}: a value cannot be read ({short(str(e), 200)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


# 5. Loading, overrides and error messages --------------------------------------------------------
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxstring, _repr.maxother, _repr.maxlong = 3, 6, 6, 120, 120, 40


def _value(val) -> str:
    """A bounded rendering of a received value (never the whole of a huge or self-nested input)."""
    try:
        text = _repr.repr(val)
    except RecursionError:
        return f"<{type(val).__name__}>"
    return text if len(text) <= 200 else text[:175] + f"... ({len(text)} chars)"


def _describe_expected(err: dict) -> str:
    ctx = err.get("ctx") or {}
    t = err["type"]
    if t == "extra_forbidden":
        return "no such key"
    if t == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if t == "finite_number":
        return "a finite number"
    if "expected" in ctx:
        return f"one of {ctx['expected']}"
    for k, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if k in ctx:
            return f"a value {word} {ctx[k]}"
    return err["msg"][0].lower() + err["msg"][1:]


def format_validation_error(e: ValidationError, model: type[BaseModel], source: str = "") -> str:
    lines = []
    errors = e.errors()
    for err in errors[:10]:
        key = ".".join(str(p) for p in err["loc"])
        key = key if len(key) <= 120 else key[:100] + "..."
        val = err.get("input")
        if err["type"] == "extra_forbidden":
            parent = _section_for(model, err["loc"][:-1])
            valid = ", ".join(sorted(parent.model_fields)) if parent else ""
            lines.append(f"unknown key '{key}' (value {_value(val)}); valid keys here: {valid}")
        else:
            lines.append(f"key '{key}': got {_value(val)} ({type(val).__name__}); expected {_describe_expected(err)}")
    if len(errors) > 10:
        lines.append(f"... and {len(errors) - 10} more")
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
    """``"evaluate.lambda_max=0.5"`` -> ``(["evaluate", "lambda_max"], 0.5)``; the value is parsed as YAML (1.2 scalars)."""
    if "=" not in item:
        raise ConfigError(f"--set {short(item)}: expected key=value, e.g. --set seed=1")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {short(item)}: empty key")
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--set {key}: value of {len(raw)} characters, more than {MAX_CONFIG_BYTES}")
    try:
        value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    except ConfigError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        cur = data
        for p in path[:-1]:
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {short(item)}: '{p}' is a value, not a section")
            cur = nxt
        cur[path[-1]] = value
    return data


def shipped_configs() -> list[str]:
    return sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """A file as given, or the name of a shipped config ('miniworld', 'cub.yaml').

    Only a bare name (no directory part) falls back to the shipped configs: ``/some/dir/cub.yaml``
    that does not exist is an error, never silently the shipped ``cub``.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.exists():
        raise ConfigError(f"--config {short(str(path))}: not a file")
    if len(Path(path).parts) == 1:
        for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
            if cand.is_file():
                return cand
    raise ConfigError(f"--config {short(str(path))}: no such file; shipped configs (by bare name): "
                      f"{', '.join(shipped_configs())}")


def load_yaml(path: Path) -> dict:
    """A config file as a dict: bounded in size, UTF-8, valid YAML 1.2, a mapping at the top."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a config file may hold at most {MAX_CONFIG_BYTES}")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                          f"save the file as UTF-8") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def read_config_data(path: str | Path | None = None, overrides: list[str] | None = None) -> tuple[dict, str]:
    """``(data, source)``: the YAML file's mapping (empty without a file) with the overrides applied."""
    source, data = "", {}
    if path:
        p = resolve_config_path(path)
        data = load_yaml(p)
        source = str(p)
    return apply_overrides(data, list(overrides or [])), source


def validate_config(data: dict, model: type[BaseModel], source: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, source)) from None
    except RecursionError:
        raise ConfigError(f"invalid config{' in ' + source if source else ''}: nested too deeply") from None


def load_config(path: str | Path | None, overrides: list[str] | None, model: type[BaseModel]) -> Any:
    """Validated ``model`` from an optional YAML file plus ``key=value`` overrides (for run configs
    use :func:`digzsl_ray.methods.load_run_config`, which picks the method's config class)."""
    data, source = read_config_data(path, overrides)
    return validate_config(data, model, source)


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def section_value(cfg: BaseModel, dotted: str) -> Any:
    """The config value at ``dotted`` ("evaluate", "models.clip", "seed") in fingerprint form: a section
    whole (recursively), minus its fields marked ``affects_outputs=False``."""
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, BaseModel) or part not in type(cur).model_fields:
            raise KeyError(f"config has no key {dotted!r}")
        cur = getattr(cur, part)
    return _outputs_view(cur)


def _outputs_view(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: _outputs_view(getattr(value, k)) for k in type(value).model_fields
                if affects_outputs(type(value), k)}
    if isinstance(value, (list, tuple)):
        return [_outputs_view(v) for v in value]
    return value


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
