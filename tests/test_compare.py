"""`digzsl compare`: statistics over seeds, grouping, refusals, compare.json / compare.html (no Ray, no torch).

The run directories are fabricated with the shapes a real `digzsl run` writes (config.yaml, run.json,
metrics.json with `ablation`, `timing_s`, `peak_rss_mb`), small.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from digzsl_ray.cli.main import build_parser, main
from digzsl_ray.compare import CompareError, compare_runs, format_table, mean_std, write_compare

CLASSES = ["plain red circle", "striped red circle", "red degom", "sidremis", "kloren", "dotted green diamond",
           "striped blue triangle", "green dofeten"]
UNSEEN = ["dotted green diamond", "striped blue triangle", "green dofeten"]


def _config(seed: int, method: str = "digzsl", **sections) -> dict:
    cfg = {
        "method": method, "name": "miniworld", "seed": seed,
        "data": {"format": "miniworld", "root": "", "val_fraction": 0.1, "val_seed": seed, "miniworld_seed": 0},
        "models": {"clip": "miniworld", "sd": "miniworld", "device": "auto"},
        "evaluate": {"lambda_grid": 101, "lambda_max": 1.0, "calibration": "synthetic"},
        "serve": {"host": "127.0.0.1", "port": 8000 + seed},
        "ray": {"address": "", "dashboard": True, "num_cpus": 4 + seed},
        "cdm": {"hidden_dim": 256, "epochs": 15, "workers": {"num_workers": 1, "use_gpu": False}},
        "tokens": {"templates": ["a photo of a {token} {name}"], "seed": seed, "eval_seed": 10000 + seed},
        "generate": {"images_per_class": 80, "seed": seed + 1},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def _figures(z: float, h: float = 70.0) -> dict:
    return {"zsl_top1": z, "gzsl_U": h - 10, "gzsl_S": 85.0, "gzsl_H": h, "calibration_lambda": 0.5, "ausuc": 55.0}


def make_run(root: Path, seed: int = 0, z: float = 60.0, *, config: dict | None = None, ablation: dict | None = None,
             classes=CLASSES, unseen=UNSEEN, dataset: str = "miniworld", extra: dict | None = None,
             main: str = "dct") -> Path:
    """A finished single-label run directory (the shapes of /tmp/digzsl-ablation/seed-0)."""
    root.mkdir(parents=True)
    cfg = config or _config(seed)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "run.json").write_text(json.dumps({"classes": list(classes), "dataset": dataset,
                                               "method": cfg["method"], "unseen": list(unseen)}))
    abl = ablation if ablation is not None else {"dct": _figures(z), "no_synthetic": _figures(z + 3, 71.0),
                                                 "plain_prompt": _figures(z - 6, 55.0)}
    metrics = {"ablation": abl, **{k: v for k, v in abl[main].items()}, "calibration": "synthetic",
               "chance_zsl_top1": 33.333, "num_classes": {"seen": len(classes) - len(unseen), "unseen": len(unseen)},
               "peak_rss_mb": 5000.0 + 100 * seed, "peak_rss_sum_mb": 8000.0,
               "timing_s": {"cdm": 60.0, "tokens": 200.0 + 10 * seed, "evaluate": 1.0},
               "wall_s_this_invocation": 800.0, **(extra or {})}
    (root / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return root


def _ml_figures(m: float) -> dict:
    return {"zsl_mAP": m, "zsl_F1@3": m - 2, "zsl_F1@5": m - 5, "gzsl_mAP": m / 2, "gzsl_F1@3": 20.0,
            "gzsl_F1@5": 19.0, "gzsl_P@3": 17.0, "threshold": 0.5, "per_label_AP": {"kloren": 30.0}}


def make_ml_run(root: Path, seed: int = 0, m: float = 30.0) -> Path:
    """A finished multi-label run directory (the shapes of /tmp/digzsl-ml-ablation/seed-0)."""
    root.mkdir(parents=True)
    cfg = _config(seed, method="multilabel", data={"format": "miniworld-multilabel"})
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "run.json").write_text(json.dumps({"classes": CLASSES, "dataset": "miniworld-multilabel",
                                               "method": "multilabel", "unseen": UNSEEN}))
    abl = {"filtered": _ml_figures(m + 1), "filtered_tuned": _ml_figures(m), "no_synthetic": _ml_figures(m - 7)}
    metrics = {"ablation": abl, **abl["filtered_tuned"], "task": "multi_label", "variant": "filtered_tuned",
               "metric_preset": "dualcoop", "peak_rss_mb": 3900.0, "timing_s": {"data": 10.0, "evaluate": 0.5}}
    (root / "metrics.json").write_text(json.dumps(metrics))
    return root


def _row(result: dict, variant: str, group: str | None = None) -> dict:
    return next(r for r in result["rows"] if r["variant"] == variant and (group is None or r["group"] == group))


# ---------------------------------------------------------------------------------------------
def test_mean_std_hand_case():
    assert mean_std([60, 62, 64]) == {"mean": 62.0, "std": 2.0, "values": [60.0, 62.0, 64.0]}
    assert mean_std([63.5]) == {"mean": 63.5, "std": None, "values": [63.5]}
    assert mean_std([None, 4.0, 6.0])["mean"] == 5.0 and mean_std([None, 4.0, 6.0])["values"][0] is None
    assert mean_std([None, None]) == {"mean": None, "std": None, "values": [None, None]}


def test_seeds_of_one_config_are_one_group(tmp_path):
    runs = [make_run(tmp_path / f"seed-{s}", seed=s, z=60.0 + 2 * s) for s in range(3)]
    result = compare_runs(runs)
    assert result["task"] == "single_label"
    assert result["split"] == {"name": "miniworld", "num_classes": 8, "num_unseen": 3}
    assert [g["group"] for g in result["groups"]] == ["digzsl"]
    assert result["groups"][0]["n_runs"] == 3 and result["groups"][0]["differs"] == {}
    assert [r["seed"] for r in result["runs"]] == [0, 1, 2]
    assert {r["group"] for r in result["runs"]} == {"digzsl"}
    dct = _row(result, "dct")
    assert dct["main"] is True and dct["n_runs"] == 3 and dct["test_selected"] is False
    assert dct["zsl_top1"] == {"mean": 62.0, "std": 2.0, "values": [60.0, 62.0, 64.0]}
    assert dct["gzsl_H"]["mean"] == 70.0 and dct["gzsl_H"]["std"] == 0.0
    assert _row(result, "no_synthetic")["zsl_top1"]["mean"] == 65.0 and not _row(result, "no_synthetic")["main"]
    assert [r["variant"] for r in result["rows"]] == ["dct", "no_synthetic", "plain_prompt"]
    # wall time = sum of timing_s (261, 271, 281 s); peak memory from metrics.json
    assert result["runs"][0]["wall_s"] == 261.0
    assert dct["wall_s"] == {"mean": 271.0, "std": 10.0, "values": [261.0, 271.0, 281.0]}
    assert dct["peak_rss_mb"]["mean"] == 5100.0 and dct["peak_rss_mb"]["std"] == 100.0
    table = format_table(result)
    assert "62.0 ± 2.0" in table and "dct *" in table and "271 ± 10" in table


def test_a_differing_non_seed_key_makes_another_group(tmp_path):
    a = [make_run(tmp_path / f"a{s}", seed=s, z=60.0 + s) for s in range(2)]
    b = [make_run(tmp_path / f"b{s}", seed=s, z=50.0, config=_config(s, cdm={"epochs": 5})) for s in range(2)]
    result = compare_runs([a[0], b[0], a[1], b[1]])
    groups = {g["group"]: g for g in result["groups"]}
    assert list(groups) == ["digzsl", "digzsl (2)"]
    assert groups["digzsl"]["differs"] == {"cdm.epochs": 15} and groups["digzsl (2)"]["differs"] == {"cdm.epochs": 5}
    assert groups["digzsl"]["n_runs"] == 2 and groups["digzsl (2)"]["n_runs"] == 2
    assert [r["group"] for r in result["runs"]] == ["digzsl", "digzsl (2)", "digzsl", "digzsl (2)"]
    assert _row(result, "dct", "digzsl")["zsl_top1"]["values"] == [60.0, 61.0]
    assert _row(result, "dct", "digzsl (2)")["zsl_top1"]["values"] == [50.0, 50.0]
    assert len(result["rows"]) == 6


def test_runs_of_another_method_are_another_group(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", config=_config(0, method="other"))
    result = compare_runs([a, b])
    assert [(g["group"], g["method"], g["differs"]) for g in result["groups"]] == [("digzsl", "digzsl", {}),
                                                                                  ("other", "other", {})]


def test_missing_method_defaults_to_digzsl(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", seed=1)
    cfg = _config(1)
    del cfg["method"]
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = compare_runs([a, b])
    assert [(g["group"], g["n_runs"]) for g in result["groups"]] == [("digzsl", 2)]


@pytest.mark.parametrize("kind", ["classes", "unseen"])
def test_different_splits_are_refused_and_nothing_is_written(tmp_path, capsys, kind):
    a = make_run(tmp_path / "a")
    if kind == "classes":
        b = make_run(tmp_path / "b", seed=1, classes=CLASSES[:-1] + ["vitidor", "faramu"], unseen=UNSEEN[:2] + ["faramu"])
    else:
        b = make_run(tmp_path / "b", seed=1, unseen=UNSEEN[:2] + ["kloren"])
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("digzsl: error: cannot compare") and err.count("\n") == 1
    assert str(a) in err and str(b) in err and "different class splits" in err
    if kind == "classes":
        assert "8 classes vs 9" in err and "vitidor" in err and "green dofeten" in err
    else:
        assert "unseen" in err and "kloren" in err
    assert not out.exists()
    with pytest.raises(CompareError):
        write_compare([a, b], out)
    assert not out.exists()


def test_single_and_multi_label_runs_are_refused(tmp_path, capsys):
    a = make_run(tmp_path / "a")
    b = make_ml_run(tmp_path / "b")
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "single-label" in err and "multi-label" in err and str(a) in err and str(b) in err
    assert not out.exists()


def test_multi_label_runs(tmp_path):
    runs = [make_ml_run(tmp_path / f"s{s}", seed=s, m=28.0 + 2 * s) for s in range(3)]
    result, written = write_compare(runs, tmp_path / "cmp")
    assert result["task"] == "multi_label" and result["groups"][0]["group"] == "multilabel"
    main_row = _row(result, "filtered_tuned")
    assert main_row["main"] is True and not _row(result, "filtered")["main"]
    assert main_row["zsl_mAP"] == {"mean": 30.0, "std": 2.0, "values": [28.0, 30.0, 32.0]}
    assert set(result["metrics"]) == {"zsl_mAP", "zsl_F1@3", "zsl_F1@5", "gzsl_mAP", "gzsl_F1@3", "gzsl_F1@5"}
    assert "zsl_top1" not in main_row
    assert "ZSL mAP" in (tmp_path / "cmp" / "compare.html").read_text()


def test_missing_keys_and_variants_are_null(tmp_path):
    partial = _figures(62.0)
    del partial["ausuc"], partial["calibration_lambda"]
    a = make_run(tmp_path / "a", z=60.0)
    b = make_run(tmp_path / "b", seed=1, ablation={"dct": partial, "no_synthetic": _figures(66.0)})
    c = make_run(tmp_path / "c", seed=2, z=64.0, extra={"timing_s": {}, "peak_rss_mb": 0.0})
    result = compare_runs([a, b, c])
    dct = _row(result, "dct")
    assert dct["ausuc"] == {"mean": 55.0, "std": 0.0, "values": [55.0, None, 55.0]}
    assert dct["zsl_top1"]["mean"] == 62.0
    assert result["runs"][2]["wall_s"] is None and result["runs"][2]["peak_rss_mb"] is None
    assert dct["wall_s"]["values"][2] is None and dct["wall_s"]["mean"] == 266.0
    plain = _row(result, "plain_prompt")  # only runs a and c have it
    assert plain["n_runs"] == 2 and plain["zsl_top1"]["values"] == [54.0, 58.0]
    one = compare_runs([b])
    assert _row(one, "dct")["ausuc"] == {"mean": None, "std": None, "values": [None]}
    assert _row(one, "dct")["zsl_top1"] == {"mean": 62.0, "std": None, "values": [62.0]}
    assert "-" in format_table(one).splitlines()[2].split()


def test_recorded_main_variant_wins(tmp_path):
    run = make_run(tmp_path / "a", extra={"main_variant": "plain_prompt"})
    result = compare_runs([run])
    assert [r["variant"] for r in result["rows"] if r["main"]] == ["plain_prompt"]
    assert result["runs"][0]["main_variant"] == "plain_prompt"


def test_test_selected_runs_are_marked(tmp_path, capsys):
    fair = make_run(tmp_path / "fair")
    picked = make_run(tmp_path / "picked", seed=1, config=_config(1, evaluate={"select_on_test": True}),
                      extra={"select_on_test": True})
    out = tmp_path / "cmp"
    assert main(["compare", str(fair), str(picked), "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert [g["group"] for g in result["groups"]] == ["digzsl", "digzsl (2)"]
    assert result["groups"][1]["differs"] == {"evaluate.select_on_test": True}
    assert all(r["test_selected"] for r in result["rows"] if r["group"] == "digzsl (2)")
    assert not any(r["test_selected"] for r in result["rows"] if r["group"] == "digzsl")
    assert [r["test_selected"] for r in result["runs"]] == [False, True]
    assert "test-selected" in (out / "compare.html").read_text()
    assert "[test-selected]" in capsys.readouterr().out


def test_cli_writes_both_files(tmp_path, capsys):
    runs = [str(make_run(tmp_path / f"seed-{s}", seed=s, z=60.0 + 2 * s)) for s in range(3)]
    out = tmp_path / "cmp"
    assert main(["compare", *runs, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "62.0 ± 2.0" in stdout
    assert f"wrote {out / 'compare.json'}" in stdout and f"wrote {out / 'compare.html'}" in stdout
    result = json.loads((out / "compare.json").read_text())
    assert set(result) >= {"split", "task", "runs", "groups", "rows"}
    assert set(result["runs"][0]) >= {"path", "method", "group", "seed", "wall_s", "peak_rss_mb"}
    assert set(result["groups"][0]) >= {"group", "method", "n_runs", "differs"}
    assert set(result["rows"][0]) >= {"group", "method", "variant", "main", "n_runs", "test_selected", "zsl_top1",
                                      "gzsl_U", "gzsl_S", "gzsl_H", "ausuc", "calibration_lambda", "wall_s",
                                      "peak_rss_mb"}
    page = (out / "compare.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "62.0 ± 2.0" in page and "Wall time and memory" in page and "src=\"http" not in page
    for r in runs:  # the run directories are only read
        assert sorted(p.name for p in Path(r).iterdir()) == ["config.yaml", "metrics.json", "run.json"]


def test_missing_files_name_the_path_and_the_command(tmp_path, capsys):
    run = make_run(tmp_path / "a")
    (run / "metrics.json").unlink()
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert str(run / "metrics.json") in err and "digzsl run" in err and f"--out {run}" in err
    run2 = make_run(tmp_path / "b")
    (run2 / "config.yaml").unlink()
    assert main(["compare", str(run2), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert str(run2 / "config.yaml") in err and "digzsl run" in err
    (run2 / "config.yaml").write_text("method: digzsl\n")
    (run2 / "metrics.json").write_text("{not json")
    assert main(["compare", str(run2), "--out", str(tmp_path / "cmp")]) == 2
    assert "unreadable" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "cmp")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "cmp")]) == 2  # the parent of runs
    assert "holds run directories" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_the_same_run_twice_and_out_inside_a_run_are_refused(tmp_path, capsys):
    run = make_run(tmp_path / "a")
    assert main(["compare", str(run), str(run) + "/", "--out", str(tmp_path / "cmp")]) == 2
    assert "name each run once" in capsys.readouterr().err
    assert main(["compare", str(run), "--out", str(run)]) == 2
    assert "one of the compared run directories" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.json", "run.json"]


def test_compare_needs_a_run_and_has_help(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["compare", "--help"])
    assert e.value.code == 0 and "compare.json" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["compare", "--out", "x"])
    assert e.value.code == 2


def test_compare_imports_no_torch_or_ray():
    code = ("import sys; import digzsl_ray.compare; "
            "print([m for m in ('torch', 'ray', 'matplotlib') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
