"""DIG-ZSL ("Discriminative Image Generation with Diffusion Models for Zero-Shot Learning").

Stages in order: shared prototypes -> CDM (Ray Train) -> discriminative class tokens (actor pool)
-> generation (Ray Data) -> classifier (Ray Train fed by Ray Data) -> evaluation and report.
Maths: :mod:`.dct` (token learning), the shared :mod:`.cdm` and
:mod:`digzsl_ray.classifier`; config sections: :mod:`.config`; variants: :mod:`.variants`.
"""

from digzsl_ray.methods.digzsl.addclass import STAGES as ADD_CLASS_STAGES
from digzsl_ray.methods.digzsl.addclass import add_class
from digzsl_ray.methods.digzsl.config import DigzslRunConfig
from digzsl_ray.methods.digzsl.report import build_report
from digzsl_ray.methods.digzsl.serving import request_generation, run_tokens
from digzsl_ray.methods.digzsl.stages.cdm import CDMStage
from digzsl_ray.methods.digzsl.stages.classifier import ClassifierStage
from digzsl_ray.methods.digzsl.stages.evaluate import EvaluateStage
from digzsl_ray.methods.digzsl.stages.generate import GenerateStage
from digzsl_ray.methods.digzsl.stages.tokens import TokensStage
from digzsl_ray.methods.digzsl.variants import DCT, VARIANTS
from digzsl_ray.stages.contract import Method
from digzsl_ray.stages.prototypes import PrototypesStage

METHOD = Method(
    name="digzsl",
    description="DIG-ZSL: discriminative class tokens for Stable Diffusion, images of unseen classes, a classifier",
    config=DigzslRunConfig,
    stages=(PrototypesStage(), CDMStage(), TokensStage(), GenerateStage(), ClassifierStage(), EvaluateStage()),
    variants=VARIANTS,
    main_variant=DCT,
    serve_model=f"train-classifier:{DCT}",
    report=build_report,
    add_class=add_class,
    add_class_stages=ADD_CLASS_STAGES,
    generation=request_generation,
    tokens=run_tokens,
)
