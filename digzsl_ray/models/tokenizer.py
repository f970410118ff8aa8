"""A Hugging Face ``CLIPTokenizer`` built offline from open_clip's bundled BPE vocabulary.

Stable Diffusion pipelines expect a ``CLIPTokenizer``; real checkpoints ship its files, MiniWorld
builds it from the same BPE table open_clip uses (``bpe_simple_vocab_16e6.txt.gz``, the OpenAI CLIP
vocabulary of 49,408 tokens), so both tokenizers split text identically.

transformers 5.x: ``CLIPTokenizer(vocab_file=...)`` silently builds a two-token vocabulary; pass the
vocabulary and merges as objects (``vocab=dict, merges=list``) instead.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path


def open_clip_bpe_path() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """``(vocab, merges)`` exactly as OpenAI CLIP / open_clip's SimpleTokenizer define them."""
    with gzip.open(open_clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` equivalent to open_clip's bundled tokenizer."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=model_max_length)
