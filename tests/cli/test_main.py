"""The command line: --help everywhere, one-line errors with exit code 2 for user mistakes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from digzsl_ray.cli.main import build_parser, main

COMMANDS = [[], ["miniworld"], ["miniworld", "make"], ["miniworld", "pretrain"], ["miniworld", "train-oracle"],
            ["miniworld", "check"], ["config"], ["config", "show"], ["config", "explain"], ["data"], ["data", "check"],
            ["prototypes"], ["train-cdm"], ["learn-tokens"], ["generate"], ["train-classifier"], ["evaluate"],
            ["run"], ["serve"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "digzsl")
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(cmd + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: digzsl") and len(out) > 80


def test_bad_config_is_one_line_exit_2(capsys):
    assert main(["config", "show", "--set", "tokens.gamma=2"]) == 2
    err = capsys.readouterr().err
    assert "digzsl: error: invalid config" in err and "'tokens.gamma'" in err and "Traceback" not in err


def test_config_show_round_trips(capsys):
    assert main(["config", "show", "--config", "cub"]) == 0
    out = capsys.readouterr().out
    assert "sd: sd15" in out and "format: xlsa17" in out


def test_data_check_reports_dataset_errors(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    code = main(["data", "check", "--set", "data.format=digzsl", "--set", f"data.root={tmp_path / 'd'}"])
    assert code == 2 and "dataset.json: not found" in capsys.readouterr().err


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "digzsl_ray.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train-cdm" in r.stdout


@pytest.mark.parametrize("method", ["digzsl", "multilabel", "zerodiff"])
def test_config_explain_names_the_method_it_explains(method, capsys):
    assert main(["config", "explain", "--method", method]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"method = {method!r}  #")
