"""The endpoint's request parsing and answers (digzsl_ray.serve.requests), without Ray or a web server."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digzsl_ray.serve.requests import (
    RequestError,
    decode_image,
    multi_label_answer,
    parse_k,
    parse_threshold,
    top_k,
)


@pytest.mark.parametrize("raw, want", [(None, 5), ("", 5), ("3", 3), (3, 3), (3.0, 3), ("72", 72)])
def test_k_accepted(raw, want):
    assert parse_k(raw, 5, 72) == want


@pytest.mark.parametrize("raw, words", [(True, "bad k"), ("0", "from 1 to 72"), ("73", "from 1 to 72"), (2.5, "bad k"),
                                        ("abc", "bad k"), ("9" * 40, "more than 12 digits"), ("x" * 500, "bad k")])
def test_k_refused_with_400_and_a_short_echo(raw, words):
    with pytest.raises(RequestError) as e:
        parse_k(raw, 5, 72)
    assert e.value.status == 400 and words in e.value.message and len(e.value.message) < 200


@pytest.mark.parametrize("raw", ["0", "1", "-0.1", "nan", "inf", "abc", True])
def test_threshold_strictly_between_0_and_1(raw):
    with pytest.raises(RequestError) as e:
        parse_threshold(raw, 0.5)
    assert e.value.status == 400 and "threshold" in e.value.message
    assert parse_threshold(None, 0.4) == 0.4 and parse_threshold("0.25", 0.4) == 0.25


def test_top_k_ranks_by_calibrated_score_and_reports_the_probability():
    probs = np.array([0.5, 0.3, 0.2])  # class 0 seen, 1 and 2 unseen
    out = top_k(probs, ["a", "b", "c"], {0}, 0.25, 2)
    assert [p["class"] for p in out] == ["b", "a"]  # 0.5 - 0.25 < 0.3
    assert out[1]["seen"] is True and out[1]["probability"] == pytest.approx(0.5)
    assert out[1]["score"] == pytest.approx(0.25) and out[0]["score"] == pytest.approx(0.3)


def test_multi_label_answer_labels_above_the_threshold_and_top_k_by_probability():
    ans = multi_label_answer(np.array([0.9, 0.2, 0.6, 0.1]), ["a", "b", "c", "d"], {0, 1}, 0.5, 3)
    assert [p["class"] for p in ans["labels"]] == ["a", "c"]
    assert [p["class"] for p in ans["predictions"]] == ["a", "c", "b"] and ans["threshold"] == 0.5


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_image_sizes_and_refusals():
    x = decode_image(_png(np.zeros((40, 20, 3), np.uint8)), 32, 10**6)
    assert x.shape == (3, 32, 32) and x.dtype == np.uint8
    for data, status in ((b"not an image", 400), (_png(np.zeros((400, 400, 3), np.uint8)), 413),
                         (_png(np.zeros((1, 100, 3), np.uint8)), 400)):
        with pytest.raises(RequestError) as e:
            decode_image(data, 32, 100_000)
        assert e.value.status == status, data[:20]
