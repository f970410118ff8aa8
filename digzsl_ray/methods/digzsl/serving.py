"""What serving a DIG-ZSL run needs from the method (its :class:`~digzsl_ray.stages.contract.Method`
hooks): the learned token of each of the run's classes (``tokens``, version 0's), and images on
request (``generation``: ``POST /v1/generate``, :func:`digzsl_ray.generate`), run by the Generator
deployment."""

from pathlib import Path


def run_tokens(run_dir: str | Path) -> dict[str, str]:
    """``{class name: token file}`` of the run's own classes whose token file exists; a damaged
    index gives none (generation then draws those classes from their plain prompt)."""
    from digzsl_ray.io import read_json

    tokens_dir = Path(run_dir) / "tokens"
    try:
        index = read_json(tokens_dir / "index.json") if (tokens_dir / "index.json").is_file() else {}
        return {e["name"]: str(tokens_dir / e["file"]) for e in index.values() if (tokens_dir / e["file"]).is_file()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def request_generation(cfg):
    """``requests -> [[png bytes] per request]`` on one Stable Diffusion pipeline: a class with a
    learned token is drawn with it (the first token template), any other with the plain prompt.
    Image ``j`` of a request starts from the latents of seed ``seed + j``: the same request gives
    the same images, whatever else shares its batch."""
    import torch

    from digzsl_ray.images import png_bytes
    from digzsl_ray.models.presets import load_sd_pipeline, pick_device
    from digzsl_ray.models.sd import generate

    torch.set_num_threads(cfg.models.torch_threads)
    pipe = load_sd_pipeline(cfg.models.sd, pick_device(cfg.models.device), cfg.models.precision, cfg.models.attention)
    g = cfg.generate
    loaded: dict[str, str] = {}  # token file -> placeholder
    template = cfg.tokens.templates[0]

    def prompt_of(r: dict) -> str:
        if r.get("token"):
            if r["token"] not in loaded:
                from safetensors.torch import load_file

                placeholder = next(iter(load_file(r["token"])))
                if placeholder not in pipe.tokenizer.get_vocab():
                    pipe.load_textual_inversion(r["token"])
                loaded[r["token"]] = placeholder
            return template.format(token=loaded[r["token"]], name=r["class"])
        return g.plain_template.format(name=r["class"])

    def run(requests: list[dict]) -> list[list[bytes]]:
        prompts, seeds = [], []
        for r in requests:
            p = prompt_of(r)
            prompts += [p] * r["n"]
            seeds += [r["seed"] + j for j in range(r["n"])]
        with torch.no_grad():
            imgs = generate(pipe, prompts, seeds, g.num_inference_steps, g.guidance_scale, batch=len(prompts))
        out, i = [], 0
        for r in requests:
            out.append([png_bytes(im) for im in imgs[i : i + r["n"]]])
            i += r["n"]
        return out

    return run
