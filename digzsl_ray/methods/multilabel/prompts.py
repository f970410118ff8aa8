"""Prompt diversification per unordered pair of unseen labels (Diff-ZS-MLC ``generate_prompt/``).

Every unordered pair of unseen labels, a label with itself included (COCO 17 labels: 153 pairs;
NUS 81: 3,321), gets ``n`` phrases, cached one file per pair (``<cache>/<slug a>__<slug b>.txt``,
one phrase per line) and reused on rerun. Two backends:

* ``grammar`` (MiniWorld's default): deterministic phrases from templates, seeded per pair;
* ``llm``: a chat model through ``transformers`` text generation, with the reference's three-turn
  painter dialogue (:func:`dialogue`), sampling at temperature 0.6 / top-p 0.9, and numbered-line
  parsing (:func:`parse_phrases`). A pair whose reply yields no phrase falls back to
  ``"A photo of a X next to a Y."`` (:func:`fallback`), as the reference does for a missing file.
  On a cluster the pairs are sharded over GPU actors (the stage does that; this module is one
  process's work).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Callable

import numpy as np

from digzsl_ray.io import write_text
from digzsl_ray.slug import slugify

NEGATIVE_PROMPT = ("watermark, text, poorly-drawn-eyes, poorly-drawn-fingers, bad-anatomy, ugly, extra fingers, "
                   "extra limbs, missing fingers, missing limbs, deformed, mutated hands and fingers")


def label_pairs(labels: list[str]) -> list[tuple[str, str]]:
    """Unordered pairs with repetition, in label order: (a, a), (a, b), ..., (b, b), ..."""
    return list(itertools.combinations_with_replacement(labels, 2))


def dialogue(a: str, b: str, n: int = 10) -> list[dict]:
    """The reference's three turns (the "next to" sentence is left out for a label with itself)."""
    first = ("Please forget the previous keywords. Now, if you are a painter, I have a few key words for you. "
             "Please create a picture that contains both of the key words I have given. Can you describe the "
             "painting you will create in one phrase?")
    if a != b:
        first += ' Use "next to" between two keywords.'
    return [{"role": "user", "content": first},
            {"role": "assistant", "content": "Please enter keywords."},
            {"role": "user", "content": f'Now, I give keywords "a {a}" and "a {b}", please generate {n} different '
                                        f"phrases that satisfies the condition. And each phrase should contain no "
                                        f"less than 10 words."}]


_NUMBERED = re.compile(r"^\s*(\d{1,3})[.)]\s+(.+?)\s*$")


def parse_phrases(reply: str, n: int) -> list[str]:
    """Numbered lines ("1. ...", "2) ...") of a reply, numbering and quotes stripped, at most ``n``.

    The preamble ("Of course! Here are 10 ...") and unnumbered lines are dropped.
    """
    out = []
    for line in reply.splitlines():
        m = _NUMBERED.match(line)
        if m:
            text = m.group(2).strip().strip('"').strip()
            if text:
                out.append(text)
    return out[:n]


_AN = re.compile(r"\b([Aa]) (?=(?!uni|use|eu|one)[aeiouAEIOU])")


def articles(text: str) -> str:
    """``a`` before a vowel sound becomes ``an`` ("A indigo bunting" -> "An indigo bunting"; "a unicorn"
    stays)."""
    return _AN.sub(lambda m: m.group(1) + "n ", text)


def fallback(a: str, b: str) -> str:
    return articles(f"A photo of a {a} next to a {b}.")


_PLACES = ("on a plain table", "in a quiet room", "under soft light", "on a sunny day", "in a small studio",
           "against a busy background", "seen from above", "in the morning")
_TEMPLATES = ("A {a} next to a {b} {place}.", "A picture of a {a} and a {b} {place}.",
              "There is a {a} beside a {b} {place}.", "A {b} next to a {a} {place}.",
              "A photo showing a {a} together with a {b} {place}.")
_SINGLE = ("A photo of a {a} {place}.", "A picture of a {a} {place}.", "There is a {a} {place}.")


def grammar_phrases(a: str, b: str, n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic phrases for the pair (templates x places, seeded by the pair's names)."""
    key = sum(ord(c) * (i + 1) for i, c in enumerate(f"{a}\x00{b}")) % (2**32)
    rng = np.random.default_rng(np.random.SeedSequence([seed, key]))
    templates = _SINGLE if a == b else _TEMPLATES
    combos = [(t, p) for t in templates for p in _PLACES]
    pick = rng.permutation(len(combos))[:n]
    return [articles(combos[i][0].format(a=a, b=b, place=combos[i][1])) for i in pick]


def cache_path(cache: Path, a: str, b: str) -> Path:
    return Path(cache) / f"{slugify(a)}__{slugify(b)}.txt"


def read_cached(cache: Path, a: str, b: str, n: int) -> list[str] | None:
    p = cache_path(cache, a, b)
    if not p.is_file():
        return None
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines if len(lines) >= n else None  # a shorter file (other n) is regenerated


def diversify(labels: list[str], cache: str | Path, n: int,
              backend: Callable[[str, str, int], list[str]], progress: bool = False) -> dict[tuple[str, str], list[str]]:
    """Phrases of every pair: cached files reused, missing pairs made by ``backend(a, b, n)``.

    A backend answer with fewer than ``n`` phrases is padded with the fallback prompt.
    """
    from tqdm.auto import tqdm

    cache = Path(cache)
    out: dict[tuple[str, str], list[str]] = {}
    pairs = label_pairs(labels)
    for a, b in tqdm(pairs, desc="prompts", unit="pair", disable=not progress, mininterval=2.0):
        got = read_cached(cache, a, b, n)
        if got is None:
            got = [p for p in backend(a, b, n) if p.strip()][:n]
            got += [fallback(a, b)] * (n - len(got))
            write_text(cache_path(cache, a, b), "\n".join(got) + "\n")
        out[(a, b)] = got[:n]
    return out


class ChatBackend:
    """A chat LLM through ``transformers`` (model path or hub id; the reference: Llama-2-7b-chat).

    ``model``/``tokenizer`` may be given directly (tests build a tiny random chat model from a
    literal config). Sampling is seeded per pair, so a rerun without cache gives the same phrases.
    """

    def __init__(self, model=None, tokenizer=None, path: str = "", temperature: float = 0.6, top_p: float = 0.9,
                 max_new_tokens: int = 400, device: str = "cpu", seed: int = 0):
        if model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path)
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        self.temperature, self.top_p, self.max_new_tokens, self.device, self.seed = (
            temperature, top_p, max_new_tokens, device, seed)

    def reply(self, a: str, b: str, n: int) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(dialogue(a, b, n), add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        ids = {k: v.to(self.device) for k, v in ids.items()}
        key = sum(ord(c) for c in a + "\x00" + b)
        torch.manual_seed(self.seed * 1_000_003 + key)
        with torch.no_grad():
            out = self.model.generate(**ids, do_sample=True, temperature=self.temperature, top_p=self.top_p,
                                      max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    def __call__(self, a: str, b: str, n: int) -> list[str]:
        return parse_phrases(self.reply(a, b, n), n)


def read_phrases(cache: Path, index: dict) -> dict[tuple[str, str], list[str]]:
    """Every pair's phrases from a prompt cache and its ``index.json`` content (the prompts stage's)."""
    n = index["phrases_per_pair"]
    out = {}
    for a, b, f in index["pairs"]:
        lines = [ln.strip() for ln in (Path(cache) / f).read_text(encoding="utf-8").splitlines() if ln.strip()]
        out[(a, b)] = lines[:n]
    return out


def phrase_for(phrases: dict, names: list[str], k: int) -> str:
    """The ``k``-th phrase (cycling) of a target set of label names: its pair's (a set of one label:
    the label with itself; a larger set: its first two labels, since phrases are made per pair)."""
    a, b = (names[0], names[0]) if len(names) == 1 else (names[0], names[1])
    got = phrases.get((a, b)) or phrases.get((b, a))
    if not got:
        return fallback(a, b)
    return got[k % len(got)]
