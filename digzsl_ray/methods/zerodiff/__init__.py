"""ZeroDiff++ ("Substantial Unseen Visual-semantic Correlation in Zero-shot Learning", Ye et al. 2026;
ZeroDiff, ICLR 2025, reference code FouriYe/ZeroDiff_ICLR25): generated unseen-class *features*.

Stages in order: shared prototypes -> image features (Ray Data; or xlsa17 res101.mat) -> SupCon
representation per fold -> DRG then DFG per fold (Ray Train) -> evaluation of base / diffgen /
difftta / full and report. Maths: :mod:`.schedule`, :mod:`.nets`, :mod:`.gan`, :mod:`.represent`,
:mod:`.transduct` (ours), :mod:`.spurious` (ours), :mod:`.classify`, :mod:`.evaluate`.
"""

from digzsl_ray.methods.zerodiff.config import ZerodiffRunConfig
from digzsl_ray.methods.zerodiff.variants import FULL, REPORTED
from digzsl_ray.methods.zerodiff.report import build_report
from digzsl_ray.methods.zerodiff.stages.evaluate import EvaluateStage
from digzsl_ray.methods.zerodiff.stages.features import FeaturesStage
from digzsl_ray.methods.zerodiff.stages.generators import GeneratorsStage
from digzsl_ray.methods.zerodiff.stages.represent import RepresentStage
from digzsl_ray.stages.contract import Method
from digzsl_ray.stages.prototypes import PrototypesStage


def _serve_loader(classifier_dir, device):
    from digzsl_ray.methods.zerodiff.serving import load_served

    return load_served(classifier_dir, device)


METHOD = Method(
    name="zerodiff",
    description="ZeroDiff++: diffusion-augmented GAN generation of unseen-class features, DiffGen and DiffTTA (ours)",
    config=ZerodiffRunConfig,
    stages=(PrototypesStage(), FeaturesStage(), RepresentStage(), GeneratorsStage(), EvaluateStage()),
    variants=REPORTED,
    main_variant=FULL,
    serve_model="evaluate:served",
    report=build_report,
    serve_loader=_serve_loader,
)
