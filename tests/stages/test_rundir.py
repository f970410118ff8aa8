"""The run directory: metrics.json has one writer that keeps every key; resources keep their peak."""

from __future__ import annotations

import json

import pytest

from digzsl_ray.errors import MissingInputError
from digzsl_ray.io import write_json
from digzsl_ray.stages.rundir import (
    RunDir,
    record_resources,
    stage_timing,
    write_metrics,
)


def test_write_metrics_assembles_every_source_and_loses_nothing(tmp_path):
    rd = RunDir(tmp_path)
    with pytest.raises(MissingInputError, match="evaluation.json: missing"):
        write_metrics(rd)
    write_json(rd.evaluation, {"metrics": {"zsl_top1": 50.0, "ablation": {"dct": {"zsl_top1": 50.0}}}})
    stage_timing(rd, "cdm", 12.345)
    m = write_metrics(rd)
    assert m["zsl_top1"] == 50.0 and m["timing_s"] == {"cdm": 12.35} and m["peak_rss_mb"] == 0.0
    record_resources(rd, {"peak_rss_mb": 900.0, "peak_rss_sum_mb": 1500.0, "peak_memory_breakdown": [],
                          "wall_s_this_invocation": 100.0})
    write_metrics(rd)
    # a re-evaluation (evaluation.json rewritten) keeps the run's memory figures (the c68b1b8 regression)
    write_json(rd.evaluation, {"metrics": {"zsl_top1": 51.0, "ablation": {}}})
    m = write_metrics(rd)
    assert m["zsl_top1"] == 51.0 and m["peak_rss_mb"] == 900.0 and m["peak_rss_sum_mb"] == 1500.0
    assert json.loads(rd.metrics.read_text()) == m


def test_a_resumed_run_keeps_the_largest_peak(tmp_path):
    rd = RunDir(tmp_path)
    record_resources(rd, {"peak_rss_mb": 900.0, "wall_s_this_invocation": 100.0})
    record_resources(rd, {"peak_rss_mb": 300.0, "wall_s_this_invocation": 5.0})
    res = json.loads(rd.resources.read_text())
    assert res["peak_rss_mb"] == 900.0 and res["wall_s_this_invocation"] == 5.0
