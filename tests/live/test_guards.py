"""Live-service guards without a cluster: ids that can name nothing, a damaged active.json, a served
version that is unknown, and JPEG scans counted by walking the marker segments."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from digzsl_ray.live.jobs import JobError, JobRunner, JobStore
from digzsl_ray.live.names import valid_id
from digzsl_ray.live.versions import VersionError, VersionStore
from digzsl_ray.serve import RequestError, decode_image, jpeg_scans

BASE = {"id": "v0", "classes": ["a", "b"], "parent": None}


def test_ids_that_cannot_name_a_job_or_version():
    assert valid_id("job-20261206-101010-striped-red-circle-a1b2c3") and valid_id("v3")
    for bad in ("", "x" * 65, "x" * 5000, "../x", ".hidden", "a/b", "a b", "ab\x00", 7, None):
        assert not valid_id(bad)


@pytest.mark.parametrize("n", [300, 5000])
def test_long_ids_are_404_not_enametoolong(tmp_path, n):
    (tmp_path / "models").mkdir()
    (tmp_path / "jobs").mkdir()
    vs = VersionStore(tmp_path, BASE)
    with pytest.raises(VersionError) as e:
        vs.activate("x" * n)
    assert len(str(e.value)) < 200 and "chars" in str(e.value)
    with pytest.raises(JobError) as e:
        JobStore(tmp_path).get("y" * n)
    assert e.value.status == 404 and len(e.value.message) < 120


@pytest.mark.parametrize("content", [b"\x00\xff garbage", b"", b"[1, 2]", b'{"other": 1}', b'{"version": 3}'])
def test_a_damaged_active_json_is_an_error_not_a_silent_version_0(tmp_path, content):
    vs = VersionStore(tmp_path, BASE)
    assert vs.active_id() == "v0"  # no file: version 0
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "active.json").write_bytes(content)
    with pytest.raises(VersionError, match="damaged"):
        vs.active_id()


def test_adding_a_class_while_the_active_version_is_unknown_is_409(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "active.json").write_text(json.dumps({"version": "v-gone"}))
    vs = VersionStore(tmp_path, BASE)
    runner = JobRunner(tmp_path, lambda *a: None, ["prototype"], lambda: vs.active()["classes"], queue_size=2)
    with pytest.raises(JobError) as e:
        runner.submit("striped red circle", lambda n: None)
    assert e.value.status == 409 and "unreadable" in e.value.message


def _jpeg(progressive: bool = False, icc: bytes | None = None) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    buf = io.BytesIO()
    kw = {"icc_profile": icc} if icc else {}
    im.save(buf, format="JPEG", progressive=progressive, quality=90, **kw)
    return buf.getvalue()


def test_jpeg_scans_are_counted_from_the_markers_not_from_byte_pairs():
    icc = (b"\x00" * 128) + (b"\xff\xda\x00\x10" * 70)  # binary ICC data with 70 FF DA pairs
    data = _jpeg(icc=icc)
    assert data.count(b"\xff\xda") == 71
    assert jpeg_scans(data) == 1
    assert decode_image(data, 32, 16_000_000).shape == (3, 32, 32)  # it was refused as "71 scans"
    assert 2 <= jpeg_scans(_jpeg(progressive=True)) <= 12
    assert jpeg_scans(b"\x89PNG\r\n") == 0


def test_a_jpeg_with_too_many_scans_is_still_refused():
    base = _jpeg(progressive=True)
    sos = base.index(b"\xff\xda")
    eoi = base.rindex(b"\xff\xd9")
    # repeat the progressive scans until there are far more than 64
    body = base[sos:eoi]
    bomb = base[:sos] + body * 20 + b"\xff\xd9"
    assert jpeg_scans(bomb) > 64
    with pytest.raises(RequestError) as e:
        decode_image(bomb, 32, 16_000_000)
    assert e.value.status == 400 and "scans" in e.value.message


def test_homoglyph_names_are_refused_and_non_latin_names_get_a_slug():
    from digzsl_ray.live.names import name_problem, same_class
    from digzsl_ray.slug import slugify

    cyr = "striped blue tri\u0430ngle"  # Cyrillic a
    assert "mixes Cyrillic and Latin" in name_problem(cyr)
    assert same_class(cyr, "striped blue triangle") and same_class("Striped Blue Triangle", "striped blue triangle")
    assert not same_class("striped blue triangle", "striped blue circle")
    # names in one other script are accepted, with a distinct ASCII slug each
    for name in ("東京の鳥", "Ελληνικό πουλί", "синяя птица"):
        assert name_problem(name) is None, name
    slugs = {slugify(n) for n in ("東京の鳥", "東京の猫", "синяя птица")}
    assert len(slugs) == 3 and all(s.startswith("xn-") and s.isascii() for s in slugs)
    assert slugify("Black-footed Albatross") == "black-footed-albatross" and slugify("...") == ""
    # an all-Cyrillic lookalike of a known Latin name is the same class (the queue answers 409)
    assert same_class("сосо", "coco")


def test_queued_and_running_jobs_can_be_cancelled_and_leave_no_outputs(tmp_path):
    import threading
    import time

    started, release = threading.Event(), threading.Event()

    def add_class(run_dir, job_dir, name, rep):
        with rep.stage("prototype"):
            (job_dir / "partial.bin").write_bytes(b"x" * 10)
            started.set()
            for i in range(200):
                release.wait(0.02)
                rep.progress(i / 200)
        return {"status": "succeeded", "version": "v1"}

    runner = JobRunner(tmp_path, add_class, ("prototype",), lambda: ["a"], queue_size=4)
    first = runner.submit("class one", lambda n: None)
    second = runner.submit("class two", lambda n: None)
    assert started.wait(10)
    # the queued one: cancelled at once, never runs
    out = runner.cancel(second["id"])
    assert out["status"] == "cancelled" and runner.store.get(second["id"])["status"] == "cancelled"
    # the running one: stops at its next progress report, its partial file removed
    assert runner.cancel(first["id"])["status"] == "cancelling"
    deadline = time.time() + 10
    while time.time() < deadline and runner.store.get(first["id"])["status"] != "cancelled":
        time.sleep(0.05)
    assert runner.store.get(first["id"])["status"] == "cancelled"
    assert [p.name for p in runner.store.dir(first["id"]).iterdir()] == ["state.json"]
    with pytest.raises(JobError) as e:
        runner.cancel(first["id"])
    assert e.value.status == 409
    with pytest.raises(JobError) as e:
        runner.cancel("job-unknown")
    assert e.value.status == 404
    assert runner.idle()
    # a restart requeues nothing that was cancelled
    again = JobRunner(tmp_path, add_class, ("prototype",), lambda: ["a"], queue_size=4)
    assert again.idle()
