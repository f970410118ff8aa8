"""Stage: diversified prompts for every unordered pair of unseen labels -> ``OUT/prompts/``.

```
OUT/prompts/<a>__<b>.txt   N phrases of one pair, one per line (the cache: reused on rerun)
OUT/prompts/index.json     {"pairs": [[a, b, file], ...], "backend", "phrases_per_pair", "fingerprint"}
```
The grammar backend runs in the driver. The chat backend runs an LLM on a pool of Ray Data actors
(``prompts.actors``, ``prompts.num_gpus`` each) over batches of pairs still missing from the cache,
so a killed run keeps every pair it finished; NUS-WIDE's 81 unseen labels make 3,321 pairs.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from digzsl_ray.io import read_json, write_json, write_text
from digzsl_ray.methods.multilabel.prompts import (
    cache_path,
    fallback,
    grammar_phrases,
    label_pairs,
    read_cached,
    read_phrases,
)
from digzsl_ray.stages.contract import Stage
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")


class ChatPhrases:
    """Ray Data callable class: one chat LLM per actor; a batch of pairs -> their phrases."""

    def __init__(self, model: str, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                 device: str, threads: int):
        import torch

        from digzsl_ray.methods.multilabel.prompts import ChatBackend
        from digzsl_ray.models.presets import pick_device

        torch.set_num_threads(threads)
        self.backend = ChatBackend(path=model, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                   device=str(pick_device(device)), seed=seed)
        self.n = n

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for a, b in zip(batch["a"], batch["b"]):
            got = [p for p in self.backend(str(a), str(b), self.n) if p.strip()][: self.n]
            out.append("\n".join(got + [fallback(str(a), str(b))] * (self.n - len(got))))
        return {"a": batch["a"], "b": batch["b"], "phrases": np.array(out, dtype=object)}


class PromptsStage(Stage):
    name = "prompts"
    help = "N diversified phrases per pair of unseen labels (grammar, or a chat LLM on Ray actors) -> OUT/prompts/"
    writes = {"dir": "prompts", "index": "prompts/index.json"}
    depends_on = ("prompts",)
    needs_ray = True

    def complete(self, ctx) -> bool:
        p = ctx.path("prompts:index")
        if not p.is_file():
            return False
        idx = read_json(p)
        return idx.get("fingerprint") == self.fingerprint(ctx) and all(
            (ctx.path("prompts:dir") / f).is_file() for _, _, f in idx["pairs"])

    def cached(self, ctx) -> dict:
        idx = read_json(ctx.path("prompts:index"))
        return {"pairs": len(idx["pairs"]), "backend": idx["backend"]}

    def run(self, ctx) -> dict:
        split, pc = ctx.split, ctx.cfg.prompts
        t0 = time.time()
        d = ctx.path("prompts:dir")
        fp = self.fingerprint(ctx)
        idx_path = ctx.path("prompts:index")
        old = read_json(idx_path) if idx_path.is_file() else {}
        if old.get("fingerprint") not in (None, fp):  # other backend or settings: the cache is not this run's
            for f in d.glob("*.txt"):
                f.unlink()
        pairs = label_pairs(split.unseen_names)
        todo = [(a, b) for a, b in pairs if read_cached(d, a, b, pc.phrases_per_pair) is None]
        log.info("prompts: %d pairs, %d cached, %d to make (%s)", len(pairs), len(pairs) - len(todo), len(todo),
                 pc.backend)
        if todo and pc.backend == "grammar":
            for a, b in todo:
                write_text(cache_path(d, a, b), "\n".join(grammar_phrases(a, b, pc.phrases_per_pair, pc.seed)) + "\n")
        elif todo:
            self._chat(ctx, todo)
        write_json(idx_path, {"pairs": [[a, b, cache_path(d, a, b).name] for a, b in pairs], "backend": pc.backend,
                              "model": pc.model, "phrases_per_pair": pc.phrases_per_pair, "fingerprint": fp})
        stage_timing(ctx.rd, "prompts", time.time() - t0)
        return {"pairs": len(pairs), "made": len(todo), "backend": pc.backend}

    def _chat(self, ctx, todo: list[tuple[str, str]]) -> None:
        import ray
        from tqdm.auto import tqdm

        from digzsl_ray.config import ConfigError

        cfg, pc = ctx.cfg, ctx.cfg.prompts
        if not pc.model:
            raise ConfigError("prompts.model: empty; the chat backend needs a model folder or hub id "
                              "(e.g. meta-llama/Llama-2-7b-chat-hf), or set prompts.backend: grammar")
        d = ctx.path("prompts:dir")
        ds = ray.data.from_items([{"a": a, "b": b} for a, b in todo],
                                 override_num_blocks=max(1, len(todo) // pc.pairs_per_batch))
        ds = ds.map_batches(ChatPhrases, fn_constructor_kwargs=dict(
            model=pc.model, n=pc.phrases_per_pair, temperature=pc.temperature, top_p=pc.top_p,
            max_new_tokens=pc.max_new_tokens, seed=pc.seed, device=cfg.models.device,
            threads=cfg.models.torch_threads),
            batch_size=pc.pairs_per_batch, compute=ray.data.ActorPoolStrategy(size=pc.actors),
            num_gpus=pc.num_gpus or None, num_cpus=pc.num_cpus, batch_format="numpy")
        bar = tqdm(total=len(todo), desc="prompts", unit="pair", disable=not ctx.progress, dynamic_ncols=True)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for a, b, text in zip(batch["a"], batch["b"], batch["phrases"]):
                write_text(cache_path(d, str(a), str(b)), str(text) + "\n")  # written as each pair arrives
            bar.update(len(batch["a"]))
        bar.close()


def load_phrases(ctx) -> dict[tuple[str, str], list[str]]:
    """Every pair's phrases from OUT/prompts."""
    return read_phrases(ctx.require("prompts:dir"), read_json(ctx.require("prompts:index")))
