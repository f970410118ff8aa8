"""Model loading: the same loaders for presets, folders and ids; clear errors before loading."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import make_tiny_models

from digzsl_ray.models.presets import (
    ModelLoadError,
    check_sd_source,
    load_clip,
    load_sd_pipeline,
    resolve_sd,
)
from digzsl_ray.models.tokenizer import build_clip_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("m"))


def test_tokenizer_matches_open_clip():
    import open_clip

    hf, oc = build_clip_tokenizer(), open_clip.get_tokenizer("ViT-B-32")
    for text in ["a photo of a striped red circle", "Black-footed Albatross!", "grizzly bear, 2 cubs"]:
        a = hf(text, padding="max_length", max_length=77).input_ids
        b = oc([text])[0].tolist()
        n = b.index(49407) + 1
        assert a[:n] == b[:n]  # identical ids; only the padding id differs (SD pads with <|endoftext|>)
    assert len(hf) == 49408


def test_presets_resolve():
    assert resolve_sd("sd15") == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert resolve_sd("/x/y") == "/x/y"
    assert check_sd_source("org/some-model") == "org/some-model"  # a hub id passes through


def test_sd_folder_loads_and_generates_deterministically(tiny):
    from digzsl_ray.models.sd import generate

    pipe = load_sd_pipeline(str(tiny[0]))
    a = generate(pipe, ["a red circle"] * 2, [5, 6], steps=2, guidance=3.0)
    b = generate(pipe, ["a red circle"] * 2, [5, 6], steps=2, guidance=3.0, batch=1)
    assert a.shape == (2, 3, 16, 16) and torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a[0], a[1])


@pytest.mark.parametrize("case, match", [
    ("missing", "no such directory"),
    ("no_index", "no model_index.json"),
    ("other_pipeline", "holds a FluxPipeline pipeline; expected a StableDiffusionPipeline"),
    ("missing_part", "lacks pipeline components \\['unet'\\]"),
])
def test_not_a_stable_diffusion_folder(tiny, tmp_path, case, match):
    import shutil

    d = tmp_path / "p"
    if case != "missing":
        shutil.copytree(tiny[0], d)
    if case == "no_index":
        (d / "model_index.json").unlink()
    elif case == "other_pipeline":
        meta = json.loads((d / "model_index.json").read_text())
        meta["_class_name"] = "FluxPipeline"
        (d / "model_index.json").write_text(json.dumps(meta))
    elif case == "missing_part":
        shutil.rmtree(d / "unet")
    with pytest.raises(ModelLoadError, match=match):
        load_sd_pipeline(str(d))


def test_xformers_needs_cuda(tiny):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelLoadError, match="xformers' needs a CUDA device"):
        load_sd_pipeline(str(tiny[0]), attention="xformers")


def test_clip_local_dir_and_errors(tiny, tmp_path):
    model, preprocess, tok = load_clip(f"local-dir:{tiny[1]}")
    assert model.encode_text(tok(["a red circle"])).shape[-1] == 16
    with pytest.raises(ModelLoadError, match="is not a directory"):
        load_clip(f"local-dir:{tmp_path / 'none'}")
