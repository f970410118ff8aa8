"""The endpoint's request parsing and answers (digzsl_ray.serve.requests), without Ray or a web server."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digzsl_ray.serve.requests import (
    RequestError,
    base64_image,
    decode_image,
    generate_request,
    json_object,
    media_type,
    multi_label_answer,
    multipart_mixed,
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


@pytest.mark.parametrize("body, status, words", [
    (b"{", 400, "not valid JSON"), (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    (b"[1, 2]", 400, "must be an object"), (b"\xff\xfe", 400, "not valid JSON")])
def test_json_bodies_refused(body, status, words):
    with pytest.raises(RequestError) as e:
        json_object(body)
    assert e.value.status == status and words in e.value.message


def test_json_body_and_its_base64_image():
    import base64

    assert json_object(b'{"a": 1}') == {"a": 1}
    assert base64_image({"image_base64": base64.b64encode(b"png!").decode()}) == b"png!"
    for obj, words in (({}, "missing field 'image_base64'"), ({"image_base64": 3}, "must be a base64 string"),
                       ({"image_base64": "a*b"}, "not valid base64")):
        with pytest.raises(RequestError) as e:
            base64_image(obj)
        assert e.value.status == 400 and words in e.value.message
    assert media_type("Application/JSON; charset=utf-8") == "application/json" and media_type(None) == ""


def test_generate_requests_checked_with_their_status():
    classes = ["red circle", "blue square"]
    assert generate_request({"class": "red circle"}, classes, 8) == ("red circle", 4, 0)
    assert generate_request({"class": "blue square", "n": 8, "seed": 2**31 - 1}, classes, 8) == ("blue square", 8,
                                                                                                 2**31 - 1)
    cases = [({}, 400, "missing field 'class'"), ({"class": "x" * 500}, 404, "unknown class"),
             ({"class": "red circle", "n": 9}, 400, "from 1 to 8"), ({"class": "red circle", "n": True}, 400, "bad n"),
             ({"class": "red circle", "seed": -1}, 400, "bad seed"), ({"class": "red circle", "seed": 2**31}, 400,
                                                                      "bad seed")]
    for obj, status, words in cases:
        with pytest.raises(RequestError) as e:
            generate_request(obj, classes, 8)
        assert e.value.status == status and words in e.value.message and len(e.value.message) < 200


def test_multipart_mixed_holds_each_image_once_between_boundaries():
    body, mtype = multipart_mixed([b"\x89PNG-a", b"\x89PNG-bb"])
    boundary = mtype.split("boundary=")[1]
    parts = body.split(f"--{boundary}".encode())
    assert parts[0] == b"" and parts[-1] == b"--\r\n" and len(parts) == 4
    assert parts[1].endswith(b"\r\n\r\n\x89PNG-a\r\n") and b'filename="1.png"' in parts[2]
