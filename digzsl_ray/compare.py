"""``digzsl compare OUT1 OUT2 ... --out DIR``: finished runs side by side, mean ± std over seeds.

Reads each run directory's ``config.yaml``, ``run.json`` and ``metrics.json`` (nothing else, and
never writes there), refuses runs that cannot be compared (another class split, single-label mixed
with multi-label), groups the runs and writes ``DIR/compare.json`` and ``DIR/compare.html``.

Grouping: runs of one method (config ``method``, default ``digzsl``) whose configs are equal once
every seed-like key (any key whose name contains ``seed``, at any depth) and the sections that
change no output (``ray``, ``serve``) are left out are one group, each run one seed. Runs of one
method whose configs differ otherwise are separate groups, labelled ``digzsl``, ``digzsl (2)``, ...,
with the keys that tell them apart (``differs``). For every group and every variant of the runs'
``metrics.json`` ``ablation``, each metric is ``{"mean", "std" (sample, ddof=1; null for one value),
"values" (one per run, null where the run lacks the key)}``. See docs/compare.md.

Plain Python and numpy (matplotlib for the chart); no torch, no Ray.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digzsl_ray.errors import UserError, short
from digzsl_ray.io import write_json, write_text

SINGLE_LABEL = "single_label"
MULTI_LABEL = "multi_label"
METRICS = {
    SINGLE_LABEL: ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "ausuc", "calibration_lambda"),
    MULTI_LABEL: ("zsl_mAP", "zsl_F1@3", "zsl_F1@5", "gzsl_mAP", "gzsl_F1@3", "gzsl_F1@5"),
}
CHART_METRICS = {SINGLE_LABEL: ("zsl_top1", "gzsl_H"), MULTI_LABEL: ("zsl_mAP", "gzsl_mAP")}
LABELS = {"zsl_top1": "ZSL T1", "gzsl_U": "GZSL U", "gzsl_S": "GZSL S", "gzsl_H": "GZSL H", "ausuc": "AUSUC",
          "calibration_lambda": "lambda", "zsl_mAP": "ZSL mAP", "zsl_F1@3": "ZSL F1@3", "zsl_F1@5": "ZSL F1@5",
          "gzsl_mAP": "GZSL mAP", "gzsl_F1@3": "GZSL F1@3", "gzsl_F1@5": "GZSL F1@5",
          "wall_s": "wall (s)", "peak_rss_mb": "peak RSS (MB)"}
DECIMALS = {"calibration_lambda": 3, "wall_s": 0, "peak_rss_mb": 0}  # others: 1
IGNORED_SECTIONS = ("ray", "serve")  # scaling and serving: no effect on a run's figures
DEFAULT_METHOD = "digzsl"
JSON_NAME, HTML_NAME = "compare.json", "compare.html"


class CompareError(UserError):
    """Runs that cannot be compared, or a run directory that cannot be read."""


@dataclass
class Run:
    """One finished run directory, as far as the comparison reads it."""

    path: Path
    config: dict
    fingerprint: dict  # run.json: dataset, method, classes, unseen
    metrics: dict
    method: str
    seed: Any
    task: str
    variants: dict[str, dict]  # name -> figures
    main_variant: str | None
    test_selected: bool
    wall_s: float | None
    peak_rss_mb: float | None
    group: str = ""


@dataclass
class Group:
    label: str
    method: str
    config: dict  # the config without seed-like keys and ignored sections
    runs: list[Run] = field(default_factory=list)
    differs: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading run directories
def _how_to_make(path: Path) -> str:
    if (path / "config.yaml").is_file():
        return f"run `digzsl run --config {path / 'config.yaml'} --out {path}` to finish it"
    return f"run `digzsl run --config CONFIG --out {path}` first"


def _not_a_run(path: Path, run: Path) -> CompareError:
    inside = sorted(d.name for d in run.iterdir() if (d / "metrics.json").is_file()) if run.is_dir() else []
    if inside:
        more = f" and {len(inside) - 5} more" if len(inside) > 5 else ""
        return CompareError(f"{path}: missing; {run} is not a run directory but holds run directories "
                            f"({', '.join(inside[:5])}{more}): name those, e.g. {run / inside[0]}")
    return CompareError(f"{path}: missing, so {run} is not a finished run directory; {_how_to_make(run)}")


def _read_json_file(path: Path, run: Path) -> dict:
    if not path.is_file():
        raise _not_a_run(path, run)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CompareError(f"{path}: unreadable ({short(str(e), 160)}); {_how_to_make(run)}") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path}: expected a JSON object, got {type(data).__name__}; {_how_to_make(run)}")
    return data


def _read_config(path: Path, run: Path) -> dict:
    from digzsl_ray.config import ConfigError, load_yaml

    if not path.is_file():
        raise _not_a_run(path, run)
    try:
        return load_yaml(path)
    except ConfigError as e:
        raise CompareError(f"{path}: unreadable ({short(str(e), 160)}); "
                           f"run `digzsl run --config CONFIG --out {run}` again") from None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def task_of(metrics: dict) -> str:
    """``multi_label`` for a run of the multi-label protocol (its metrics.json says so, or holds
    mAP / F1 figures), ``single_label`` otherwise."""
    if metrics.get("task") in (SINGLE_LABEL, MULTI_LABEL):
        return metrics["task"]
    figures = [metrics] + [v for v in (metrics.get("ablation") or {}).values() if isinstance(v, dict)]
    if any(k in f for f in figures for k in METRICS[MULTI_LABEL]):
        return MULTI_LABEL
    return SINGLE_LABEL


def _main_variant(metrics: dict, variants: dict[str, dict], keys: tuple[str, ...]) -> str | None:
    """The variant whose figures are metrics.json's top-level keys (``main_variant`` if recorded)."""
    for recorded in ("main_variant", "variant"):
        name = metrics.get(recorded)
        if isinstance(name, str) and name in variants:
            return name
    for name, figures in variants.items():
        shared = [k for k in keys if _number(metrics.get(k)) is not None and _number(figures.get(k)) is not None]
        if shared and all(abs(_number(metrics[k]) - _number(figures[k])) <= 1e-9 for k in shared):
            return name
    return None


def load_run(path: str | Path) -> Run:
    """A run directory's config, split, figures, wall time and peak memory (CompareError if unreadable)."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise CompareError(f"{path}: no such run directory; run `digzsl run --config CONFIG --out {path}` "
                           f"to make one")
    metrics = _read_json_file(root / "metrics.json", root)
    config = _read_config(root / "config.yaml", root)
    fingerprint = _read_json_file(root / "run.json", root)
    if not isinstance(fingerprint.get("classes"), list) or not isinstance(fingerprint.get("unseen"), list):
        raise CompareError(f"{root / 'run.json'}: holds no class list or unseen classes, so the run's split is "
                           f"unknown; {_how_to_make(root)}")
    task = task_of(metrics)
    keys = METRICS[task]
    ablation = metrics.get("ablation")
    if ablation is None:  # a run without ablation: its top-level figures are its one variant
        name = next((metrics[k] for k in ("main_variant", "variant") if isinstance(metrics.get(k), str)), "main")
        variants = {name: {k: metrics.get(k) for k in keys if k in metrics}}
    elif isinstance(ablation, dict) and all(isinstance(v, dict) for v in ablation.values()):
        variants = dict(ablation)
    else:
        raise CompareError(f"{root / 'metrics.json'}: `ablation` is not an object of variants; "
                           f"{_how_to_make(root)}")
    timing = metrics.get("timing_s")
    times = [_number(v) for v in timing.values()] if isinstance(timing, dict) else []
    times = [t for t in times if t is not None]
    rss = _number(metrics.get("peak_rss_mb"))
    method = config.get("method") or DEFAULT_METHOD
    return Run(path=root, config=config, fingerprint=fingerprint, metrics=metrics, method=str(method),
               seed=config.get("seed"), task=task, variants=variants,
               main_variant=_main_variant(metrics, variants, keys),
               test_selected=metrics.get("select_on_test") is True,
               wall_s=round(sum(times), 2) if times else None,
               peak_rss_mb=rss if rss and rss > 0 else None)  # 0.0: no resources.json was recorded


# ---------------------------------------------------------------------------------------------
# Refusals
def check_same_task(runs: list[Run]) -> str:
    first = runs[0]
    for r in runs[1:]:
        if r.task != first.task:
            raise CompareError(
                f"cannot compare {first.path} ({first.task.replace('_', '-')}, method {first.method!r}) with "
                f"{r.path} ({r.task.replace('_', '-')}, method {r.method!r}): single-label and multi-label runs "
                f"report different metrics; compare runs of one kind")
    return first.task


def _split_difference(a: dict, b: dict) -> str | None:
    ca, cb = a["classes"], b["classes"]
    if set(ca) != set(cb):
        only_a = [c for c in ca if c not in set(cb)]
        only_b = [c for c in cb if c not in set(ca)]
        return (f"{len(ca)} classes vs {len(cb)}, {len(only_a) + len(only_b)} not in both "
                f"(e.g. only in the first: {only_a[:3]}, only in the second: {only_b[:3]})")
    ua, ub = a["unseen"], b["unseen"]
    if set(ua) != set(ub):
        only_a = [c for c in ua if c not in set(ub)]
        only_b = [c for c in ub if c not in set(ua)]
        return (f"the same {len(ca)} classes but other unseen classes: {len(ua)} unseen vs {len(ub)}, "
                f"{len(only_a) + len(only_b)} unseen in only one (e.g. only in the first: {only_a[:3]}, "
                f"only in the second: {only_b[:3]})")
    return None


def check_same_split(runs: list[Run]) -> dict:
    """The split every run shares: ``{"name", "num_classes", "num_unseen"}``; CompareError otherwise."""
    first = runs[0]
    for r in runs[1:]:
        diff = _split_difference(first.fingerprint, r.fingerprint)
        if diff:
            datasets = (first.fingerprint.get("dataset"), r.fingerprint.get("dataset"))
            where = f"datasets {datasets[0]!r} and {datasets[1]!r}; " if datasets[0] != datasets[1] else ""
            raise CompareError(f"cannot compare {first.path} with {r.path}: they were run on different class "
                               f"splits ({where}{diff}); compare runs of one split")
    names = list(dict.fromkeys(str(r.fingerprint.get("dataset", "")) for r in runs))
    return {"name": " / ".join(n for n in names if n) or None, "num_classes": len(first.fingerprint["classes"]),
            "num_unseen": len(first.fingerprint["unseen"])}


# ---------------------------------------------------------------------------------------------
# Grouping
def is_seed_key(key) -> bool:
    return "seed" in str(key).lower()


def without_seeds(value: Any) -> Any:
    """``value`` with every mapping key that contains "seed" dropped, at any depth."""
    if isinstance(value, dict):
        return {k: without_seeds(v) for k, v in value.items() if not is_seed_key(k)}
    if isinstance(value, list):
        return [without_seeds(v) for v in value]
    return value


def comparable_config(config: dict) -> dict:
    """What must be equal for two runs to be seeds of one configuration (besides the method)."""
    return without_seeds({k: v for k, v in config.items() if k not in IGNORED_SECTIONS and k != "method"})


def flatten(value: Any, prefix: str = "") -> dict:
    """Dotted keys of nested mappings (lists are values)."""
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value} if prefix else {}



def group_runs(runs: list[Run]) -> list[Group]:
    groups: list[Group] = []
    for r in runs:
        cfg = comparable_config(r.config)
        g = next((g for g in groups if g.method == r.method and g.config == cfg), None)
        if g is None:
            n = sum(1 for g in groups if g.method == r.method) + 1
            g = Group(label=r.method if n == 1 else f"{r.method} ({n})", method=r.method, config=cfg)
            groups.append(g)
        g.runs.append(r)
        r.group = g.label
    for method in dict.fromkeys(g.method for g in groups):
        same = [g for g in groups if g.method == method]
        if len(same) < 2:
            continue
        flat = [flatten(g.config) for g in same]
        keys = list(dict.fromkeys(k for f in flat for k in f))
        def seen_as(f: dict, k: str) -> str:
            return json.dumps(f[k], sort_keys=True, default=str) if k in f else "<missing>"

        differing = [k for k in keys if len({seen_as(f, k) for f in flat}) > 1]
        for g, f in zip(same, flat):
            g.differs = {k: f.get(k) for k in differing}
    return groups


# ---------------------------------------------------------------------------------------------
# Statistics and the comparison
def mean_std(values: list) -> dict:
    """``{"mean", "std", "values"}``: mean and sample std (ddof=1) of the numbers in ``values``
    (nulls left out); std is null with fewer than two numbers, both are null with none."""
    nums = [v for v in (_number(x) for x in values) if v is not None]
    return {"mean": round(statistics.fmean(nums), 6) if nums else None,
            "std": round(statistics.stdev(nums), 6) if len(nums) > 1 else None,
            "values": [_number(x) for x in values]}


def compare_runs(paths: list) -> dict:
    """The compare.json object for the run directories ``paths`` (reads only; CompareError on refusal)."""
    if not paths:
        raise CompareError("name at least one run directory: digzsl compare OUT1 [OUT2 ...] --out DIR")
    runs = [load_run(p) for p in paths]
    seen: dict[Path, str] = {}
    for p, r in zip(paths, runs):
        if r.path in seen:
            raise CompareError(f"{p}: the same run directory as {seen[r.path]}; name each run once")
        seen[r.path] = str(p)
    task = check_same_task(runs)
    split = check_same_split(runs)
    groups = group_runs(runs)
    keys = METRICS[task]
    rows = []
    for g in groups:
        mains = [r.main_variant for r in g.runs if r.main_variant]
        main = max(dict.fromkeys(mains), key=mains.count) if mains else None
        for variant in dict.fromkeys(v for r in g.runs for v in r.variants):
            vr = [r for r in g.runs if variant in r.variants]
            row = {"group": g.label, "method": g.method, "variant": variant, "main": variant == main,
                   "n_runs": len(vr), "test_selected": any(r.test_selected for r in vr),
                   "seeds": [r.seed for r in vr]}
            for k in keys:
                row[k] = mean_std([r.variants[variant].get(k) for r in vr])
            row["wall_s"] = mean_std([r.wall_s for r in vr])
            row["peak_rss_mb"] = mean_std([r.peak_rss_mb for r in vr])
            rows.append(row)
    return {
        "split": split,
        "task": task,
        "metrics": list(keys),
        "runs": [{"path": str(r.path), "method": r.method, "group": r.group, "seed": r.seed, "wall_s": r.wall_s,
                  "peak_rss_mb": r.peak_rss_mb, "main_variant": r.main_variant, "test_selected": r.test_selected}
                 for r in runs],
        "groups": [{"group": g.label, "method": g.method, "n_runs": len(g.runs), "differs": g.differs,
                    "seeds": [r.seed for r in g.runs], "wall_s": mean_std([r.wall_s for r in g.runs]),
                    "peak_rss_mb": mean_std([r.peak_rss_mb for r in g.runs])} for g in groups],
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------
# Output
def fmt(stat: dict | None, key: str) -> str:
    """``"63.2 ± 2.4"``, ``"63.2"`` (one value) or ``"-"`` (none)."""
    if not stat or stat.get("mean") is None:
        return "-"
    d = DECIMALS.get(key, 1)
    text = f"{stat['mean']:.{d}f}"
    return text if stat.get("std") is None else f"{text} ± {stat['std']:.{d}f}"


def _variant_label(row: dict) -> str:
    return row["variant"] + (" *" if row["main"] else "") + (" [test-selected]" if row["test_selected"] else "")


def _align(header: list[str], body: list[list[str]], left: int) -> list[str]:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned, others right."""
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in [header] + body]


def format_table(result: dict) -> str:
    """The comparison as aligned text: one line per group and variant, then time and memory per group."""
    keys = result["metrics"]
    split = result["split"]
    lines = [f"split {split['name']!r}: {split['num_classes']} classes, {split['num_unseen']} unseen "
             f"({result['task'].replace('_', '-')}); {len(result['runs'])} runs in {len(result['groups'])} group(s)"]
    lines += _align(["group", "variant", "n"] + [LABELS[k] for k in keys],
                    [[r["group"], _variant_label(r), str(r["n_runs"])] + [fmt(r[k], k) for k in keys]
                     for r in result["rows"]], left=2)
    unit = "percent except lambda" if result["task"] == SINGLE_LABEL else "percent"
    lines.append(f"(mean ± sample std over seeds, {unit}; * main variant (metrics.json's top-level figures)"
                 + ("; [test-selected]: chosen on the test set, not a fair comparison" if
                    any(r["test_selected"] for r in result["rows"]) else "") + ")")
    lines.append("")
    lines += _align(["group", "n", "seeds", "wall (s)", "peak RSS (MB)"],
                    [[g["group"], str(g["n_runs"]), ",".join(str(s) for s in g["seeds"]), fmt(g["wall_s"], "wall_s"),
                      fmt(g["peak_rss_mb"], "peak_rss_mb")] for g in result["groups"]], left=1)
    for g in result["groups"]:
        if g["differs"]:
            lines.append(f"{g['group']}: " + ", ".join(f"{k}={short(v, 60)}" for k, v in g["differs"].items()))
    return "\n".join(lines)


def _chart(result: dict) -> str:
    """Grouped bars (one cluster per group and variant) of the two headline metrics, sample-std error
    bars, each run's value as a dot. Base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from digzsl_ray.htmlreport import fig_png

    rows = result["rows"]
    keys = CHART_METRICS[result["task"]]
    x = np.arange(len(rows))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    for j, k in enumerate(keys):
        means = [r[k]["mean"] if r[k]["mean"] is not None else 0.0 for r in rows]
        errs = [r[k]["std"] or 0.0 for r in rows]
        pos = x + (j - (len(keys) - 1) / 2) * width
        ax.bar(pos, means, width, yerr=errs, capsize=4, label=LABELS[k], color=f"C{j}", alpha=0.85)
        for p, r in zip(pos, rows):
            vals = [v for v in r[k]["values"] if v is not None]
            if len(vals) > 1:
                ax.plot([p] * len(vals), vals, "k.", ms=4)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r['group']}\n{r['variant']}" + (" *" if r["main"] else "")
                        + ("\n(test-selected)" if r["test_selected"] else "") for r in rows], fontsize=8)
    ax.set_ylabel("percent")
    ax.set_title("mean ± sample std over seeds (dots: single runs; * main variant)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig_png(fig)


def _table(header: list[str], body: list[list[str]], row_styles: list[str] | None = None) -> str:
    style = "border-collapse:collapse"
    cell = "border:1px solid #ccc;padding:4px 8px"
    out = [f'<table style="{style}"><tr>' + "".join(f'<th style="{cell}">{html.escape(h)}</th>' for h in header)
           + "</tr>"]
    for i, r in enumerate(body):
        extra = (row_styles or [""] * len(body))[i]
        out.append(f'<tr style="{extra}">' + "".join(f'<td style="{cell}">{c}</td>' for c in r) + "</tr>")
    return "".join(out) + "</table>"


def render_html(result: dict) -> str:
    from digzsl_ray.htmlreport import img_tag, page

    keys = result["metrics"]
    split = result["split"]
    esc = html.escape
    unit = "percent (lambda: the calibration offset)" if result["task"] == SINGLE_LABEL else "percent"
    parts = [f"<h1>Comparison of {len(result['runs'])} runs</h1>",
             f"<p>Split {esc(str(split['name']))}: {split['num_classes']} classes, {split['num_unseen']} unseen; "
             f"{esc(result['task'].replace('_', '-'))}. Figures: mean ± sample standard deviation (ddof 1) over "
             f"the runs (seeds) of each group, in {unit}; <b>bold</b>: the main variant (metrics.json's top-level "
             f"figures); - : not recorded.</p>"]
    if any(r["test_selected"] for r in result["rows"]):
        parts.append('<p class="no">Rows marked <b>test-selected</b> come from runs whose metrics.json records '
                     '<code>select_on_test: true</code>: their choices were made on the test set, so their figures '
                     'overstate what the method reaches and are not comparable to the others.</p>')
    body, styles = [], []
    for r in result["rows"]:
        label = esc(r["variant"]) + (" (main)" if r["main"] else "")
        if r["test_selected"]:
            label += ' <span class="no">test-selected</span>'
        body.append([esc(r["group"]), label, str(r["n_runs"])] + [esc(fmt(r[k], k)) for k in keys])
        styles.append("font-weight:bold" if r["main"] else "")
    parts.append("<h2>Metrics</h2>" + _table(["group", "variant", "runs"] + [LABELS[k] for k in keys], body, styles))
    names = " and ".join(LABELS[k] for k in CHART_METRICS[result["task"]])
    parts.append(f"<h2>{esc(names)}</h2>" + img_tag(_chart(result), names, "900px"))
    if any(g["differs"] for g in result["groups"]):
        parts.append("<h2>Groups</h2><p>Runs of one method whose configs differ beyond seeds (and the "
                     "<code>ray</code>/<code>serve</code> sections) are separate groups:</p>" + _table(
                         ["group", "method", "runs", "differs"],
                         [[esc(g["group"]), esc(g["method"]), str(g["n_runs"]),
                           "<br>".join(f"<code>{esc(k)}</code> = {esc(short(v, 120))}"
                                       for k, v in g["differs"].items())]
                          for g in result["groups"]]))
    parts.append("<h2>Wall time and memory</h2><p>Wall time: the sum of the stage times (metrics.json "
                 "<code>timing_s</code>); memory: the peak resident memory of the run's processes.</p>" + _table(
                     ["group", "runs", "seeds", "wall (s)", "wall (min)", "peak RSS (MB)"],
                     [[esc(g["group"]), str(g["n_runs"]), esc(", ".join(str(s) for s in g["seeds"])),
                       esc(fmt(g["wall_s"], "wall_s")),
                       esc(fmt({"mean": g["wall_s"]["mean"] / 60 if g["wall_s"]["mean"] is not None else None,
                                "std": g["wall_s"]["std"] / 60 if g["wall_s"]["std"] is not None else None}, "min")),
                       esc(fmt(g["peak_rss_mb"], "peak_rss_mb"))] for g in result["groups"]]))
    parts.append("<h2>Runs</h2>" + _table(
        ["run directory", "group", "seed", "main variant", "wall (s)", "peak RSS (MB)", "test-selected"],
        [[f"<code>{esc(r['path'])}</code>", esc(r["group"]), esc(str(r["seed"])), esc(str(r["main_variant"] or "-")),
          "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}",
          "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}", "yes" if r["test_selected"] else ""]
         for r in result["runs"]]))
    return page("digzsl compare", parts)


def write_compare(paths: list, out: str | Path) -> tuple[dict, list[Path]]:
    """Compare ``paths`` and write ``out/compare.json`` and ``out/compare.html``; nothing is written
    when the runs are refused. Returns the comparison and the paths written."""
    out = Path(out).expanduser()
    result = compare_runs(paths)
    target = out.resolve()
    if any(Path(r["path"]) == target for r in result["runs"]):
        raise CompareError(f"--out {out}: is one of the compared run directories; write the comparison elsewhere")
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out}: exists and is not a directory")
    page_text = render_html(result)  # everything is computed before the first byte is written
    write_json(out / JSON_NAME, result)
    write_text(out / HTML_NAME, page_text)
    return result, [out / JSON_NAME, out / HTML_NAME]
