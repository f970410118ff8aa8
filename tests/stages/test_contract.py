"""The stage contract and the method registry, without Ray: declarations, fingerprints, completeness."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny_dataset, tiny_overrides

from digzsl_ray.config import section_value
from digzsl_ray.errors import MissingInputError
from digzsl_ray.methods import get_method, load_run_config, registered
from digzsl_ray.prototypes import save_prototypes
from digzsl_ray.stages.contract import Context, check_inputs
from digzsl_ray.stages.runner import context

METHOD = get_method("digzsl")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("c") / "d", per_class=2, test_per_class=1)


def _ctx(data, tmp_path, *extra):
    # the models are never loaded here: fingerprints and completeness need only the config and files
    cfg = load_run_config(None, tiny_overrides(tmp_path / "sd", tmp_path / "clip", data) + list(extra))
    return context(cfg, METHOD, tmp_path / "run", progress=False)


def _with(ctx, *overrides):
    cfg = load_run_config(None, tiny_overrides(ctx.cfg.models.sd, ctx.cfg.models.clip[len("local-dir:"):],
                                               ctx.cfg.data.root) + list(overrides))
    return Context(cfg=cfg, rd=ctx.rd, split=ctx.split, method=ctx.method, progress=False)


def test_registry_and_method_declarations():
    assert "digzsl" in registered()
    assert [s.name for s in METHOD.stages] == ["prototypes", "train-cdm", "learn-tokens", "generate",
                                               "train-classifier", "evaluate"]
    assert METHOD.variants == ("clip_zero_shot", "no_synthetic", "plain_prompt", "dct") and METHOD.main_variant == "dct"
    cfg = METHOD.config()
    owners = {}
    for i, stage in enumerate(METHOD.stages):
        for key in stage.depends_on:
            section_value(cfg, key)  # every declared config key exists
        for out, rel in stage.writes.items():
            assert rel not in owners, f"{rel} declared by {owners.get(rel)} and {stage.name}"
            owners[rel] = stage.name
        for ref in stage.reads:  # reads refer to outputs of earlier stages
            up, _, out = ref.partition(":")
            assert out in METHOD.stage(up).writes
            assert [s.name for s in METHOD.stages].index(up) < i
    # the run-directory contract of the README ("What a run writes") keeps its paths
    assert METHOD.output("/r", "prototypes:prototypes").as_posix() == "/r/prototypes.safetensors"
    assert METHOD.output("/r", "train-cdm:dir").as_posix() == "/r/cdm"
    assert METHOD.output("/r", "learn-tokens:index").as_posix() == "/r/tokens/index.json"
    assert METHOD.output("/r", "generate:dct").as_posix() == "/r/synthetic"
    assert METHOD.output("/r", "generate:plain_prompt").as_posix() == "/r/synthetic_plain"
    assert METHOD.output("/r", "train-classifier:dct").as_posix() == "/r/classifier"
    assert METHOD.output("/r", METHOD.serve_model).as_posix() == "/r/classifier"
    assert METHOD.output("/r", "evaluate:metrics").as_posix() == "/r/metrics.json"
    with pytest.raises(KeyError, match="writes no 'nope'"):
        METHOD.output("/r", "train-cdm:nope")


def test_prototypes_fingerprint_covers_the_clip_model(data, tmp_path):
    """A changed models.clip makes the prototypes stage incomplete (it used to keep the old ones)."""
    ctx = _ctx(data, tmp_path)
    stage = METHOD.stage("prototypes")
    path = ctx.path("prototypes:prototypes")
    save_prototypes(path, torch.randn(len(ctx.split.classes), 8), ctx.split.classes,
                    extra={"fingerprint": stage.fingerprint(ctx)})
    assert stage.complete(ctx)
    other = _with(ctx, "models.clip=clip-vit-l14")
    assert stage.fingerprint(other) != stage.fingerprint(ctx) and not stage.complete(other)
    assert not stage.complete(_with(ctx, 'prototypes.templates=["a {}."]'))
    # a runtime setting (threads, devices) changes nothing
    assert stage.complete(_with(ctx, "models.torch_threads=4", "models.device=cpu"))


def test_cdm_fingerprint_follows_its_sections_and_upstream_content(data, tmp_path):
    ctx = _ctx(data, tmp_path)
    cdm = METHOD.stage("train-cdm")
    with pytest.raises(MissingInputError, match="prototypes.safetensors: missing; run `digzsl prototypes"):
        check_inputs(cdm, ctx)
    path = ctx.path("prototypes:prototypes")
    save_prototypes(path, torch.zeros(len(ctx.split.classes), 8), ctx.split.classes)
    check_inputs(cdm, ctx)
    fp = cdm.fingerprint(ctx)
    assert cdm.fingerprint(_with(ctx, "cdm.workers.num_workers=3")) == fp  # scaling is not an output
    assert cdm.fingerprint(_with(ctx, "cdm.epochs=4")) != fp
    assert cdm.fingerprint(_with(ctx, "seed=1")) != fp
    assert cdm.fingerprint(_with(ctx, "data.val_seed=1")) != fp
    assert cdm.fingerprint(_with(ctx, "models.clip=clip-vit-l14")) != fp
    save_prototypes(path, torch.ones(len(ctx.split.classes), 8), ctx.split.classes)  # upstream content changed
    assert cdm.fingerprint(ctx) != fp


def test_token_fingerprint_takes_every_learning_setting(data, tmp_path):
    """Every field of the tokens section is in the fingerprint unless marked runtime(): a new
    learning setting can no longer be forgotten in a hand-kept list."""
    ctx = _ctx(data, tmp_path)
    stage = METHOD.stage("learn-tokens")
    fp = stage.fingerprint(ctx)
    for override in ("tokens.lr=0.01", "tokens.grad_steps=2", "tokens.init_word=shape", "tokens.seed=3",
                     "models.sd=sd15", "models.precision=fp16"):
        assert stage.fingerprint(_with(ctx, override)) != fp, override
    # scaling, and the fresh-seed measurement (which records its own settings), do not relearn tokens
    for override in ("tokens.pool_max=5", "tokens.num_cpus=2", "tokens.shard_size=3", "generate.actors=4",
                     "tokens.eval_images=3", "tokens.eval_seed=7", "generate.num_inference_steps=3"):
        assert stage.fingerprint(_with(ctx, override)) == fp, override


def test_incomplete_outputs_are_not_complete(data, tmp_path):
    ctx = _ctx(data, tmp_path)
    for stage in METHOD.stages:
        if stage.name in ("prototypes", "train-cdm"):
            assert not stage.complete(ctx), stage.name
    assert not METHOD.stage("evaluate").complete(ctx)  # always reassembled


def test_val_seed_changes_the_validation_draw_only(data, tmp_path):
    from digzsl_ray.data import load_split

    a = _ctx(data, tmp_path).split
    b = load_split(load_run_config(None, tiny_overrides(tmp_path, tmp_path, data) + ["data.val_seed=1"]).data,
                   validate=False, progress=False)
    assert a.classes == b.classes and a.unseen == b.unseen
    assert sorted(i.path for i in a.train_items() + a.val) == sorted(i.path for i in b.train_items() + b.val)
    assert sorted(i.path for i in a.val) != sorted(i.path for i in b.val)
