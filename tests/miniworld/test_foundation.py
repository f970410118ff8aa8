"""MiniWorld foundation models: shipped models load through the real loaders, generate
deterministically, take textual-inversion tokens; the pretraining job runs on a tiny captioned
folder and writes loadable models; bad captioned folders are refused with file and line."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from digzsl_ray.data.captioned import CaptionedFolderError, read_captioned_folder
from digzsl_ray.models.presets import ASSETS, load_clip, load_sd_pipeline

shipped = pytest.mark.skipif(not (ASSETS / "sd" / "model_index.json").is_file(),
                             reason="shipped MiniWorld models missing")


@shipped
def test_shipped_models_load_and_generate_deterministically():
    from diffusers import StableDiffusionPipeline

    pipe = load_sd_pipeline("miniworld")
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.unet.dtype == torch.float32
    kw = dict(num_inference_steps=2, guidance_scale=3.0, output_type="pt")
    a = pipe(["a photo of a striped red circle"] * 2, generator=torch.Generator().manual_seed(0), **kw).images
    b = pipe(["a photo of a striped red circle"] * 2, generator=torch.Generator().manual_seed(0), **kw).images
    c = pipe(["a photo of a striped red circle"] * 2, generator=torch.Generator().manual_seed(1), **kw).images
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    model, _, tok = load_clip("miniworld")
    f = model.encode_image(torch.zeros(1, 3, 32, 32))
    assert f.shape == (1, model.text_projection.shape[1]) and tok(["a red circle"]).shape[-1] == 32
    from digzsl_ray.miniworld.oracle import load_oracle

    oracle, names = load_oracle(ASSETS / "oracle")
    assert len(names) == 72 and oracle(torch.zeros(1, 3, 32, 32)).shape == (1, 72)


@shipped
def test_a_learned_embedding_loads_into_a_stock_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    # the shipped weights are fp16 (like many hub checkpoints): load them as fp32 for the CPU
    pipe = StableDiffusionPipeline.from_pretrained(str(ASSETS / "sd"), safety_checker=None, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    vec = torch.randn(dim)
    save_file({"<dct-test>": vec}, str(tmp_path / "t.safetensors"))
    pipe.load_textual_inversion(str(tmp_path / "t.safetensors"))
    tid = pipe.tokenizer.convert_tokens_to_ids("<dct-test>")
    assert torch.allclose(pipe.text_encoder.get_input_embeddings().weight[tid].float(), vec, atol=1e-3)
    out = pipe("a photo of a <dct-test> red circle", num_inference_steps=2, output_type="pt").images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def _folder(root: Path, n: int = 40) -> Path:
    from digzsl_ray.miniworld.make import WorldParams, make_world

    make_world(root, WorldParams(corpus_size=n), progress=False, parts=("corpus",))
    return root / "corpus"


@pytest.mark.ray
def test_pretraining_job_runs_few_steps_writes_loadable_models_and_resumes(tmp_path):
    import ray

    from digzsl_ray.config import PretrainConfig
    from digzsl_ray.pretrain.job import run_pretrain

    data = _folder(tmp_path / "w", 96)
    cfg = PretrainConfig(vae_steps=4, sd_steps=4, clip_steps=4, vae_decoder_steps=4, sd_batch=8, vae_batch=8, clip_batch=16,
                         report_every=2, checkpoint_every=2, cpus_per_worker=1)
    tmp = tempfile.mkdtemp(prefix="p", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, logging_level="ERROR")
    try:
        meta = run_pretrain(data, tmp_path / "out", cfg)
        assert {k: v["step"] for k, v in meta["phases"].items()} == {"vae": 4, "sd": 4, "clip": 4, "vae_decoder": 4}
        pipe = load_sd_pipeline(str(tmp_path / "out" / "sd"))
        img = pipe("a red circle", num_inference_steps=2, output_type="pt").images
        assert img.shape == (1, 3, 32, 32)
        model, _, tok = load_clip(f"local-dir:{tmp_path / 'out' / 'clip'}")
        assert model.encode_text(tok(["a red circle"])).shape[0] == 1
        meta2 = run_pretrain(data, tmp_path / "out", cfg)  # resume: every phase is already complete
        # same steps and losses (wall-clock seconds are re-rounded when the metadata is rewritten)
        def strip(m):
            return {k: {f: v for f, v in ph.items() if f != "seconds"} for k, ph in m["phases"].items()}

        assert strip(meta2) == strip(meta)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def test_vae_decoder_phase_changes_the_decoder_only():
    """The last pretraining phase must leave the encoder, hence the latents the UNet learnt, untouched."""
    import torch
    from diffusers import AutoencoderKL

    from digzsl_ray.pretrain.arch import SDArch, vae_config
    from digzsl_ray.pretrain.loops import PhaseState, train_vae_decoder

    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config(SDArch(image_size=16)))
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    x = images.float().div(127.5).sub(1)
    with torch.no_grad():
        z0 = vae.encode(x).latent_dist.mean.clone()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    reports = []
    state = train_vae_decoder(vae, images, steps=3, batch=4, lr=1e-3, state=PhaseState(), opt_state=None,
                              report=lambda m, lazy: reports.append((m, sorted(lazy()))), every=1, seed=0,
                              progress=False)
    after = vae.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    with torch.no_grad():
        assert torch.equal(vae.encode(x).latent_dist.mean, z0)
    assert state.step == 3 and [m["phase"] for m, _ in reports] == ["vae_decoder"] * 3
    assert reports[-1][1] == ["vae", "vae_decoder_opt"]
    assert not any(p.requires_grad for p in vae.parameters())


@pytest.mark.parametrize("problem, match", [
    ("bad_json", r"metadata.jsonl:3: not valid JSON"),
    ("empty_caption", r"metadata.jsonl:2: empty caption for 'images/000001.png'"),
    ("missing_key", r"metadata.jsonl:1: expected an object with 'file_name' and 'text'"),
    ("missing_image", r"(?s)1 bad image\(s\).*metadata.jsonl:4: images/000003.png: missing"),
    ("corrupt_image", r"metadata.jsonl:5: images/000004.png: unreadable"),
])
def test_bad_captioned_folders_are_refused_with_file_and_line(tmp_path, problem, match):
    root = _folder(tmp_path / "w", 8)
    meta = root / "metadata.jsonl"
    lines = meta.read_text().splitlines()
    if problem == "bad_json":
        lines[2] = lines[2][:-3]
    elif problem == "empty_caption":
        obj = json.loads(lines[1])
        obj["text"] = "  "
        lines[1] = json.dumps(obj)
    elif problem == "missing_key":
        lines[0] = json.dumps({"file": "images/000000.png", "text": "x"})
    elif problem == "missing_image":
        (root / "images" / "000003.png").unlink()
    elif problem == "corrupt_image":
        (root / "images" / "000004.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(CaptionedFolderError, match=match):
        read_captioned_folder(root)
