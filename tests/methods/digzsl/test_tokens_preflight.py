"""Bad input to token learning is refused before any model loads."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import TINY_CLASSES, make_tiny_dataset, make_tiny_models, tiny_overrides

from digzsl_ray.methods import get_method
from digzsl_ray.methods import load_run_config as load_config
from digzsl_ray.methods.digzsl.stages.tokens import (
    TokenStageError,
    class_jobs,
    preflight,
)
from digzsl_ray.prototypes import save_prototypes
from digzsl_ray.stages.runner import context


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("pf")
    sd, clip = make_tiny_models(base / "m")
    data = make_tiny_dataset(base / "d", per_class=2, test_per_class=1)
    return sd, clip, data, base


def _ready(setup, tmp_path, extra=()):
    sd, clip, data, _ = setup
    cfg = load_config(None, tiny_overrides(sd, clip, data) + list(extra))
    ctx = context(cfg, get_method(), tmp_path / "run", progress=False)
    save_prototypes(ctx.path("prototypes:prototypes"), torch.randn(len(ctx.split.classes), 16), ctx.split.classes)
    ctx.path("train-cdm:dir").mkdir(parents=True)
    ctx.path("train-cdm:config").write_text("{}")
    return cfg, ctx, ctx.split


def test_all_good(setup, tmp_path):
    cfg, ctx, split = _ready(setup, tmp_path)
    preflight(ctx, class_jobs(cfg, split))


def test_unseen_class_missing_from_prototypes(setup, tmp_path):
    cfg, ctx, split = _ready(setup, tmp_path)
    save_prototypes(ctx.path("prototypes:prototypes"), torch.randn(4, 16), TINY_CLASSES[:4])
    with pytest.raises(TokenStageError, match="2 unseen class\\(es\\) are missing from .*prototypes.safetensors: "
                                              "'purple circle', 'orange square'"):
        preflight(ctx, class_jobs(cfg, split))


def test_placeholder_already_in_tokenizer(setup, tmp_path):
    cfg, ctx, split = _ready(setup, tmp_path, ["tokens.placeholder=circle{slug}"])
    jobs = class_jobs(cfg, split)
    jobs[0]["token"] = "circle</w>"  # an existing vocabulary entry
    with pytest.raises(TokenStageError, match="already exist in the tokenizer.*circle</w>"):
        preflight(ctx, jobs)


def test_pipeline_folder_that_is_not_stable_diffusion(setup, tmp_path):
    from digzsl_ray.models.presets import ModelLoadError

    (tmp_path / "notsd").mkdir()
    (tmp_path / "notsd" / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDMPipeline"}))
    cfg, ctx, split = _ready(setup, tmp_path, [f"models.sd={tmp_path / 'notsd'}"])
    with pytest.raises(ModelLoadError, match="holds a AudioLDMPipeline pipeline; expected a StableDiffusionPipeline"):
        preflight(ctx, class_jobs(cfg, split))


def test_template_without_token(setup, tmp_path):
    cfg, ctx, split = _ready(setup, tmp_path, ['tokens.templates=["a photo of a {name}"]'])
    with pytest.raises(TokenStageError, match="expected both '\\{token\\}' and '\\{name\\}'"):
        preflight(ctx, class_jobs(cfg, split))
