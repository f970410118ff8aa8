"""Prompt diversification: pairs, the reference dialogue, parsing, the per-pair cache, both backends."""

from digzsl_ray.methods.multilabel import prompts as pr


def test_pairs_include_a_label_with_itself():
    assert pr.label_pairs(["a", "b", "c"]) == [("a", "a"), ("a", "b"), ("a", "c"), ("b", "b"), ("b", "c"), ("c", "c")]
    assert len(pr.label_pairs([str(i) for i in range(17)])) == 153  # COCO
    assert len(pr.label_pairs([str(i) for i in range(81)])) == 3321  # NUS


def test_dialogue_is_the_reference_wording():
    d = pr.dialogue("bus", "umbrella", 10)
    assert [t["role"] for t in d] == ["user", "assistant", "user"]
    assert d[0]["content"].endswith('one phrase? Use "next to" between two keywords.')
    assert d[2]["content"] == ('Now, I give keywords "a bus" and "a umbrella", please generate 10 different phrases '
                               'that satisfies the condition. And each phrase should contain no less than 10 words.')
    assert "next to" not in pr.dialogue("cat", "cat")[0]["content"]


def test_parse_numbered_lines_drops_the_preamble():
    reply = ("Of course! Here are 10 phrases:\n\n1. A bus next to a colorful umbrella on a sunny day.\n"
             '2) "A red bus parked next to a big umbrella."\nnot numbered\n3.   \n10. Last one here.')
    assert pr.parse_phrases(reply, 10) == ["A bus next to a colorful umbrella on a sunny day.",
                                           "A red bus parked next to a big umbrella.", "Last one here."]
    assert pr.parse_phrases(reply, 1) == ["A bus next to a colorful umbrella on a sunny day."]


def test_cache_is_one_file_per_pair_and_reused(tmp_path):
    calls = []

    def backend(a, b, n):
        calls.append((a, b))
        return pr.grammar_phrases(a, b, n)[:2]  # short answer: padded with the fallback

    out = pr.diversify(["red circle", "faramu"], tmp_path / "c", 3, backend)
    assert len(calls) == 3 and sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "faramu__faramu.txt", "red-circle__faramu.txt", "red-circle__red-circle.txt"]
    assert out[("red circle", "faramu")][2] == "A photo of a red circle next to a faramu."
    again = pr.diversify(["red circle", "faramu"], tmp_path / "c", 3, backend)
    assert len(calls) == 3 and again == out
    assert pr.grammar_phrases("a", "b", 4, seed=1) == pr.grammar_phrases("a", "b", 4, seed=1)
    assert len(set(pr.grammar_phrases("a", "b", 8))) == 8


def _tiny_chat():
    """A random Llama-architecture chat model and byte-level tokenizer, from literal configs (offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({"<s>": len(vocab), "</s>": len(vocab) + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = bl
    tok.decoder = decoders.ByteLevel()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    t.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}[assistant] {% endif %}")
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"]))
    return model, t


def test_chat_backend_runs_a_tiny_random_model_offline(tmp_path):
    model, tok = _tiny_chat()
    chat = pr.ChatBackend(model=model, tokenizer=tok, max_new_tokens=24, seed=0)
    reply = chat.reply("bus", "cat", 3)
    assert isinstance(reply, str) and reply == chat.reply("bus", "cat", 3)  # seeded per pair
    out = pr.diversify(["bus", "cat"], tmp_path / "llm", 3, chat)
    # random weights write no numbered lines: every phrase is the reference's fallback
    assert out[("bus", "cat")] == ["A photo of a bus next to a cat."] * 3


def test_chat_actor_loads_a_model_folder_and_answers_every_pair(tmp_path):
    import numpy as np

    from digzsl_ray.methods.multilabel.stages.prompts import ChatPhrases

    model, tok = _tiny_chat()
    model.save_pretrained(tmp_path / "chat")
    tok.save_pretrained(tmp_path / "chat")
    actor = ChatPhrases(model=str(tmp_path / "chat"), n=3, temperature=0.6, top_p=0.9, max_new_tokens=16, seed=0,
                        device="cpu", threads=1)
    out = actor({"a": np.array(["bus", "cat"], dtype=object), "b": np.array(["cat", "cat"], dtype=object)})
    lines = [str(x).splitlines() for x in out["phrases"]]
    # random weights write no numbered lines: each pair gets N fallback phrases
    assert lines == [["A photo of a bus next to a cat."] * 3, ["A photo of a cat next to a cat."] * 3]


def test_grammar_prompts_use_an_before_a_vowel_sound():
    from digzsl_ray.methods.multilabel.prompts import articles, fallback, grammar_phrases

    assert fallback("indigo bunting", "apple") == "A photo of an indigo bunting next to an apple."
    for p in grammar_phrases("indigo bunting", "orange cat", 8):
        assert " a indigo" not in p and " a orange" not in p and not p.startswith("A indigo"), p
    assert articles("a unicorn, a user and a ox") == "a unicorn, a user and an ox"
    assert articles("A red kite") == "A red kite"
