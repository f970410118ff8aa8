"""The endpoint's request parsing and answers, free of Ray and of any web framework: what a route
checks (``k``, ``threshold``, image bytes, JPEG scans) and how it answers (calibrated top k, label
sets). :class:`RequestError` carries the HTTP status; the app turns it into a 4xx JSON answer.
Tested without a cluster."""

import io

import numpy as np

MAX_ECHO = 80  # characters of a client's input that an error message may quote


def _echo(value) -> str:
    from digzsl_ray.errors import short

    return short(value, MAX_ECHO)


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_threshold(raw, default: float) -> float:
    """A request's ``threshold`` (multi-label runs): a number strictly between 0 and 1, else 400."""
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise RequestError(400, "bad threshold: expected a number between 0 and 1, got a boolean")
    try:
        t = float(raw)
    except (TypeError, ValueError):
        raise RequestError(400, f"bad threshold: got {_echo(raw)}, expected a number between 0 and 1") from None
    if not 0.0 < t < 1.0:
        raise RequestError(400, f"bad threshold: got {_echo(raw)}, expected a number between 0 and 1 (exclusive)")
    return t


def multi_label_answer(probs: np.ndarray, classes: list[str], seen: set[int], threshold: float, k: int) -> dict:
    """Every label whose probability exceeds ``threshold`` (highest first) and the top ``k``."""
    p = probs.astype(np.float64)
    order = np.argsort(-p, kind="stable")

    def row(i):
        return {"class": classes[i], "probability": round(float(p[i]), 6), "seen": int(i) in seen}

    return {"labels": [row(i) for i in order if p[i] > threshold], "predictions": [row(i) for i in order[:k]],
            "threshold": threshold}


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # never EPS/PS (Ghostscript) or other exotica
MAX_ASPECT = 20  # longer side / shorter side


def jpeg_scans(data: bytes, limit: int | None = None) -> int:
    """Start-of-scan (SOS) segments of a JPEG, counted by walking its marker segments: a segment's
    payload (an ICC profile, EXIF, a thumbnail) is skipped by its length, and after each SOS header
    the entropy-coded data is skipped to the next marker (there an 0xFF is followed by 0x00, a
    restart marker or fill bytes). A progressive JPEG has about ten scans, while one crafted with
    thousands of empty scans costs seconds of CPU per scan. Stops counting past ``limit``."""
    if data[:2] != b"\xff\xd8":
        return 0
    n, i, scans = len(data), 2, 0
    while i + 1 < n:
        if data[i] != 0xFF:  # not at a marker: resynchronise on the next 0xFF
            j = data.find(b"\xff", i)
            if j < 0:
                break
            i = j
            continue
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0xD9:  # EOI
            break
        if m == 0x01 or 0xD0 <= m <= 0xD8:  # markers without a length
            i += 2
            continue
        if i + 3 >= n:
            break
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if m != 0xDA:
            continue
        scans += 1
        if limit is not None and scans > limit:
            break
        while True:  # entropy-coded data up to the next marker
            j = data.find(b"\xff", i)
            if j < 0 or j + 1 >= n:
                return scans
            nxt = data[j + 1]
            if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                i = j + 1 if nxt == 0xFF else j + 2
                continue
            i = j
            break
    return scans


def decode_image(data: bytes, size: int, max_pixels: int, max_jpeg_scans: int = 64) -> np.ndarray:
    """Validated image -> ``uint8 [3, size, size]``; raises :class:`RequestError` on bad input.

    Decoded as a viewer shows it (:func:`digzsl_ray.images.to_rgb`: EXIF orientation, 16-bit
    grayscale scaled, transparency on white). Work is bounded before decoding: pixel count, aspect
    ratio and, for JPEG, the number of scans."""
    from PIL import Image, UnidentifiedImageError

    from digzsl_ray.images import to_uint8_tensor

    if not data:
        raise RequestError(400, "empty image")
    scans = jpeg_scans(data, limit=max_jpeg_scans)
    if scans > max_jpeg_scans:
        raise RequestError(400, f"JPEG with more than {max_jpeg_scans} scans; at most {max_jpeg_scans} are decoded (a progressive "
                                f"JPEG has about 10)")
    try:
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise RequestError(400, "not an image: the bytes are not a supported format "
                                f"({', '.join(IMAGE_FORMATS)})") from None
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"image too large: {e}") from None
    except ValueError as e:  # e.g. a PNG text or ICC chunk over PIL's safety limit
        raise RequestError(400, f"not a usable image: {str(e)[:160]}") from None
    except Exception as e:  # PIL raises many types for malformed headers
        raise RequestError(400, f"not an image ({type(e).__name__})") from None
    w, h = im.size
    if w * h > max_pixels:
        raise RequestError(413, f"image too large: {w}x{h} = {w * h} pixels, the limit is {max_pixels}")
    if min(w, h) < 1 or max(w, h) > MAX_ASPECT * min(w, h):
        raise RequestError(400, f"unsupported image shape {w}x{h}: the longer side may be at most {MAX_ASPECT} "
                                f"times the shorter")
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"image too large: {e}") from None
    except Exception as e:  # truncated data, bad chunks, decoder errors
        raise RequestError(400, f"truncated or corrupt image ({type(e).__name__}: {str(e)[:160]})") from None
    try:
        return to_uint8_tensor(im, size).numpy()
    except Exception as e:
        raise RequestError(400, f"could not convert the image ({type(e).__name__}: {str(e)[:160]})") from None


def parse_k(raw, default: int, num_classes: int) -> int:
    if raw is None or raw == "":
        return default
    expected = f"expected an integer from 1 to {num_classes}"
    if isinstance(raw, bool):
        raise RequestError(400, f"bad k: got {_echo(raw)}, {expected}")
    try:
        k = int(raw)
        if isinstance(raw, float) and raw != k:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise RequestError(400, f"bad k: got {_echo(str(raw)[:MAX_ECHO])}, {expected}") from None
    if not 1 <= k <= num_classes:
        shown = str(k) if abs(k) < 10**12 else "a number of more than 12 digits"
        raise RequestError(400, f"bad k: got {shown}, {expected}")
    return k


def top_k(probs: np.ndarray, classes: list[str], seen: set[int], lam: float, k: int) -> list[dict]:
    """Rank by calibrated score (probability minus lambda for seen classes: the evaluation's
    :func:`digzsl_ray.metrics.zsl.calibrate`)."""
    from digzsl_ray.metrics.zsl import calibrate

    score = calibrate(np.asarray(probs)[None], sorted(seen), lam)[0]
    order = np.argsort(-score, kind="stable")[:k]
    return [{"class": classes[i], "score": round(float(score[i]), 6), "seen": i in seen,
             "probability": round(float(probs[i]), 6)} for i in order]


def media_type(header: str | None) -> str:
    """The media type of a ``Content-Type`` header, lower case, without parameters."""
    return (header or "").split(";")[0].strip().lower()


def unsupported(ctype: str, expected: str) -> RequestError:
    return RequestError(415, f"unsupported content type {_echo(ctype) if ctype else '(none)'}: send {expected}")


def json_object(body: bytes) -> dict:
    """A request body that must be a JSON object (400 otherwise, deep nesting included)."""
    import json

    try:
        obj = json.loads(body)
    except ValueError:
        raise RequestError(400, "body is not valid JSON") from None
    except RecursionError:
        raise RequestError(400, "JSON body nested too deeply") from None
    if not isinstance(obj, dict):
        raise RequestError(400, "the JSON body must be an object")
    return obj


def base64_image(obj: dict) -> bytes:
    """The image bytes of a JSON classify request (``image_base64``)."""
    import base64
    import binascii

    if "image_base64" not in obj:
        raise RequestError(400, "missing field 'image_base64' in the JSON body")
    if not isinstance(obj["image_base64"], str):
        raise RequestError(400, "field 'image_base64' must be a base64 string")
    try:
        return base64.b64decode(obj["image_base64"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "field 'image_base64' is not valid base64") from None


def generate_request(obj: dict, classes: list[str], max_n: int) -> tuple[str, int, int]:
    """``(class, n, seed)`` of a ``POST /v1/generate`` body: a class the served version knows, ``n``
    from 1 to ``max_n`` images, a seed from 0 to 2**31-1."""
    name, n, seed = obj.get("class"), obj.get("n", 4), obj.get("seed", 0)
    if not isinstance(name, str) or not name:
        raise RequestError(400, "missing field 'class' (a class name the model knows)")
    if name not in classes:
        raise RequestError(404, f"unknown class {_echo(name)}; GET /v1/classes lists them")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_n:
        raise RequestError(400, f"bad n: got {_echo(n)}, expected an integer from 1 to {max_n}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise RequestError(400, f"bad seed: got {_echo(seed)}, expected an integer from 0 to 2**31-1")
    return name, n, seed


def multipart_mixed(pngs: list[bytes]) -> tuple[bytes, str]:
    """``(body, media type)`` of PNG images as one ``multipart/mixed`` answer (``Accept: multipart/mixed``)."""
    import hashlib

    boundary = hashlib.sha256(b"".join(pngs)).hexdigest()[:24]
    parts = [f"--{boundary}\r\nContent-Type: image/png\r\nContent-Disposition: attachment; "
             f"filename=\"{i}.png\"\r\n\r\n".encode() + b + b"\r\n" for i, b in enumerate(pngs)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/mixed; boundary={boundary}"
