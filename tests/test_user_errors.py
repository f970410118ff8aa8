"""Every user mistake through the real CLI: one line on stderr naming what is wrong, exit code 2, no
traceback, nothing written. Covers the framework's error contract and the hostile inputs of an
outside test (configs, datasets, run directories).

Most cases call ``digzsl_ray.cli.main.main(argv)`` in this process (the same code path as the console
script, without an interpreter start per case); the stage and serve cases, which sit next to a Ray
start, and one config case run the real ``python -m digzsl_ray.cli`` in a subprocess, where a
traceback printed by anything (logging included) would show."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import TINY_UNSEEN, make_tiny_dataset


def cli_subprocess(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "digzsl_ray.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """``digzsl ARGS`` in this process: exit code, stdout and stderr as a subprocess would give them."""
    import contextlib
    import io
    import os

    from digzsl_ray.cli.main import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse's own errors
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_user_error(r: subprocess.CompletedProcess, *needles: str, max_chars: int = 2100) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in err.splitlines() if "digzsl: error:" in ln]
    assert len(lines) == 1 and len(lines[0]) <= max_chars, err[:3000]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("ue") / "d", per_class=2, test_per_class=1)


def _digzsl(data) -> list[str]:
    return ["--set", "data.format=digzsl", "--set", f"data.root={data}", "--set", "data.val_fraction=0.5"]


# 1. Configs ----------------------------------------------------------------------------------------
def test_config_not_utf8(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    assert_user_error(cli("config", "show", "--config", p), "not UTF-8", "offset 9")


def test_missing_config_path_never_falls_back_to_a_shipped_one():
    assert_user_error(cli("config", "show", "--config", "/nonexistent/dir/cub.yaml"), "no such file")
    r = cli("config", "show", "--config", "cub")  # a bare name still means the shipped config
    assert r.returncode == 0 and "format: xlsa17" in r.stdout


@pytest.mark.parametrize("key", ["cdm.lr", "cdm.weight_decay", "generate.guidance_scale", "tokens.num_gpus",
                                 "evaluate.lambda_max"])
def test_infinity_and_nan_are_refused(key):
    assert_user_error(cli("config", "show", "--set", f"{key}=.inf"), key, "finite")
    assert_user_error(cli("config", "show", "--set", f"{key}=.nan"), key, "finite")


@pytest.mark.parametrize("override, needle", [
    ("seed=1180591620717411303424", "<= 2147483647"),
    ("tokens.seed=2300000000000000", "<= 2147483647"),
    ("cdm.epochs=10000000000", "<="),
    ("generate.images_per_class=99999999999", "<="),
    ("cdm.epochs=true", "a number, not true"),
    ("serve.port=1:30", "serve.port"),
])
def test_integers_are_bounded_and_never_bools_or_base_60(override, needle):
    assert_user_error(cli("config", "show", "--set", override), needle)


@pytest.mark.parametrize("override, needle", [
    ('prototypes.templates=["a photo of a {name}"]', "prototypes.templates"),
    ("generate.plain_template=a photo of {nme}", "generate.plain_template"),
    ('tokens.templates=["a {token} {nam}"]', "tokens.templates"),
    ("data.root=!!binary AA==", "binary"),
])
def test_bad_templates_and_binary_values(override, needle):
    assert_user_error(cli("config", "show", "--set", override), needle)


def test_dates_are_text_in_yaml_12():
    r = cli("config", "show", "--set", "name=2024-01-01")
    assert r.returncode == 0 and "name: '2024-01-01'" in r.stdout


def test_yaml_12_scalars_in_files(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("serve:\n  port: 1:30\n")
    assert_user_error(cli("config", "show", "--config", p), "serve.port", "'1:30'")
    p.write_text("cdm:\n  epochs: 010\n")  # YAML 1.2: ten (YAML 1.1 read eight)
    r = cli("config", "show", "--config", p)
    assert r.returncode == 0 and "epochs: 10\n" in r.stdout


def test_duplicate_section_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("cdm:\n  epochs: 3\ntokens:\n  lr: 0.1\ncdm:\n  epochs: 4\n")
    assert_user_error(cli("config", "show", "--config", p), "key 'cdm' appears twice", "line 5")


def test_alias_bomb_and_huge_values_give_bounded_messages(tmp_path):
    p = tmp_path / "bomb.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 10)}]")
    lines.append("cdm: {epochs: *i}")
    p.write_text("\n".join(lines) + "\n")
    assert len(p.read_bytes()) < 600
    r = cli("config", "show", "--config", p)
    assert_user_error(r, "cdm.epochs")
    assert len(r.stderr) < 5000
    big = tmp_path / "big.yaml"
    big.write_text("name: " + "x" * 2_000_000 + "\n")
    assert_user_error(cli("config", "show", "--config", big), "at most 1000000")
    r = cli("config", "show", "--set", "name=" + "y" * 100_000)
    assert_user_error(r, "name")
    assert len(r.stderr) < 3000


# 2. Datasets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, needle", [
    (["data.format=digzsl"], "data.root: empty"),
    (["data.format=xlsa17", "data.root=/tmp"], "data.splits_dir: empty"),
    (["data.format=xlsa17", "data.root=/tmp", "data.splits_dir=/tmp"], "data.dataset: empty"),
    ([], "give --out"),  # MiniWorld renders into OUT/data/miniworld
])
def test_data_check_with_incomplete_data_section(overrides, needle):
    args = [a for o in overrides for a in ("--set", o)]
    assert_user_error(cli("data", "check", *args), needle)


def _renamed(data: Path, tmp_path: Path, old: str, new: str) -> Path:
    other = tmp_path / "renamed"
    shutil.copytree(data, other)
    meta = json.loads((other / "dataset.json").read_text())
    meta["classes"] = [new if c == old else c for c in meta["classes"]]
    meta["unseen"] = [new if c == old else c for c in meta["unseen"]]
    (other / "dataset.json").write_text(json.dumps(meta))
    import csv
    import io

    for f in (other / "splits").glob("*.csv"):
        rows = list(csv.reader(io.StringIO(f.read_text())))
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        for row in rows:
            w.writerow([row[0], new if row[1] == old else row[1]] if len(row) == 2 else row)
        f.write_text(out.getvalue())
    return other


@pytest.mark.parametrize("bad, needle", [
    ("purple\x00circle", "U+0000"),
    ("purple\ncircle", "U+000A"),
    ("purple\tcircle", "U+0009"),
    ("purple \u202ecircle", "U+202E"),
    ("purple circle " + "x" * 300, "more than 200"),
    ("purple circle " + "y" * 5000, "more than 200"),
])
def test_class_names_with_control_characters_or_too_long(data, tmp_path, bad, needle):
    assert TINY_UNSEEN[0] == "purple circle"
    other = _renamed(data, tmp_path, "purple circle", bad)
    line = assert_user_error(cli("data", "check", "--set", "data.format=digzsl", "--set", f"data.root={other}"),
                             needle)
    assert len(line) < 1000  # the 5,000-character name is not echoed whole


def test_data_check_reports_a_missing_dataset(tmp_path):
    (tmp_path / "d").mkdir()
    assert_user_error(cli("data", "check", "--set", "data.format=digzsl", "--set", f"data.root={tmp_path / 'd'}"),
                      "dataset.json")


# 3. Stages and run directories ---------------------------------------------------------------------
@pytest.mark.parametrize("stage, needle", [
    ("train-cdm", "run `digzsl prototypes"),
    ("learn-tokens", "run `digzsl train-cdm"),
    ("generate", "run `digzsl learn-tokens"),
    ("evaluate", "run `digzsl train-cdm"),
])
def test_an_earlier_stage_missing_is_one_line(data, tmp_path, stage, needle):
    out = tmp_path / "run"
    if stage == "generate":  # the CDM is there; the tokens are what is missing
        (out / "cdm").mkdir(parents=True)
        (out / "cdm" / "head.safetensors").write_bytes(b"x")
    assert_user_error(cli_subprocess(stage, *_digzsl(data), "--out", out), needle, "missing")
    assert not (out / "ray").exists()  # refused before any cluster started


def test_a_model_folder_that_is_not_what_the_config_says(data, tmp_path):
    assert_user_error(cli_subprocess("prototypes", *_digzsl(data), "--set", f"models.clip=local-dir:{tmp_path / 'nope'}",
                          "--out", tmp_path / "run"), "models.clip", "is not a directory")


def test_a_run_directory_of_another_run(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"dataset": "tiny", "classes": ["a", "b"], "unseen": ["b"]}))
    assert_user_error(cli_subprocess("prototypes", *_digzsl(data), "--out", out), "made for a different dataset")
    (out / "run.json").write_text(json.dumps({"method": "zerodiff", "classes": [], "unseen": []}))
    assert_user_error(cli_subprocess("prototypes", *_digzsl(data), "--out", out), "method 'zerodiff'")


def test_serve_a_directory_without_a_classifier(tmp_path):
    assert_user_error(cli_subprocess("serve", "--run", tmp_path), "classifier", "missing")


def test_serve_a_damaged_run_directory_or_a_bad_port(tmp_path):
    cdir = tmp_path / "classifier"
    cdir.mkdir()
    for f in ("weights.safetensors", "config.json"):
        (cdir / f).write_text("{}")
    (cdir / "classes.json").write_text("{not json")
    assert_user_error(cli_subprocess("serve", "--run", tmp_path), "damaged")
    (cdir / "classes.json").write_text('{"classes": ["a"], "seen": [0], "unseen": []}')
    assert_user_error(cli_subprocess("serve", "--run", tmp_path, "--port", "0"), "serve.port", ">= 1")
    assert_user_error(cli_subprocess("serve", "--run", tmp_path, "--port", "99999"), "serve.port", "<= 65535")


def test_miniworld_make_with_unknown_parts(tmp_path):
    assert_user_error(cli("miniworld", "make", "--out", tmp_path / "w", "--parts", "corpus,foo"), "--parts", "foo")


def test_bad_config_writes_nothing(tmp_path):
    out = tmp_path / "run"
    assert_user_error(cli_subprocess("run", "--set", "cdm.epochs=0", "--out", out), "cdm.epochs")
    assert not out.exists()
