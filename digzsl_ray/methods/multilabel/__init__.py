"""Multi-label zero-shot classification by diverse, tailored generation (Diff-ZS-MLC; ``method: multilabel``).

Stages in order: shared prototypes -> diversified prompts per pair of unseen labels -> text-encoder
tuning (Ray Train) -> label-set generation with the untuned and the tuned encoder, filtered by the
CLIP discriminator (Ray Data) -> the classifier of every variant (Ray Train) -> evaluation and
report. Maths: :mod:`.discriminator`, :mod:`.losses`, :mod:`.sampling`, :mod:`.prompts`,
:mod:`.tuning`, :mod:`.fusion`, :mod:`.classifier`; config: :mod:`.config`; variants: :mod:`.variants`.
"""

from digzsl_ray.methods.multilabel.config import MultilabelRunConfig
from digzsl_ray.methods.multilabel.report import build_report
from digzsl_ray.methods.multilabel.stages.classifier import ClassifierStage
from digzsl_ray.methods.multilabel.stages.evaluate import EvaluateStage
from digzsl_ray.methods.multilabel.stages.generate import GenerateStage
from digzsl_ray.methods.multilabel.stages.prompts import PromptsStage
from digzsl_ray.methods.multilabel.stages.tune import TuneStage
from digzsl_ray.methods.multilabel.variants import FILTERED_TUNED, REPORTED, main_variant
from digzsl_ray.metrics.multilabel import format_headline
from digzsl_ray.stages.contract import Method
from digzsl_ray.stages.prototypes import PrototypesStage



def preflight(cfg) -> None:
    """Image sizes a CLIP ViT cannot take are a one-line config error before any work (not a Ray Train
    worker failing three times): read from the model's config, no weights loaded."""
    from digzsl_ray.models.presets import check_vit_size, clip_vision_config

    vision = clip_vision_config(cfg.models.clip, cfg.models.clip_pretrained)
    check_vit_size("filter.image_size", cfg.filter.image_size, vision)
    check_vit_size("classifier.image_size", cfg.classifier.image_size, vision)


def served_model(path, device="cpu"):
    """The serving hook: the classifier of ``path`` (imported here, so the CLI stays torch-free)."""
    from digzsl_ray.methods.multilabel.classifier import served_model as load

    return load(path, device)


METHOD = Method(
    name="multilabel",
    description="multi-label ZSL: diversified prompts, a CLIP-filtered generator with a tuned text encoder, "
                "a CLIP classifier with learned contexts and a feature-fusion branch",
    config=MultilabelRunConfig,
    stages=(PrototypesStage(), PromptsStage(), TuneStage(), GenerateStage(), ClassifierStage(), EvaluateStage()),
    variants=REPORTED,
    main_variant=FILTERED_TUNED,
    serve_model=f"train-classifier:{FILTERED_TUNED}",
    report=build_report,
    multi_label=True,
    headline=format_headline,
    serve_loader=served_model,
    preflight=preflight,
    # without text-encoder tuning there is no filtered_tuned classifier: the run serves filtered
    served=lambda cfg: f"train-classifier:{main_variant(cfg)}",
)
