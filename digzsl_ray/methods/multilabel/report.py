"""OUT/report.html of a multi-label run (built after the pipeline): placeholder until the full report."""

from __future__ import annotations


def build_report(ctx):
    return None
