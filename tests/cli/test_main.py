"""The command line: --help everywhere, one-line errors with exit code 2 for user mistakes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from digzsl_ray.cli.main import build_parser, main

def _commands(parser=None, path=()) -> list[list[str]]:
    """Every command and subcommand the parser knows (walked, so a new one is checked too)."""
    import argparse

    parser = parser or build_parser()
    out = [list(path)]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands()


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "digzsl")
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(cmd + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: digzsl") and len(out) > 80


def test_every_stage_of_every_method_is_a_command_whose_help_describes_it(capsys):
    from digzsl_ray.methods import get_method, registered

    assert {"run", "serve", "add-class", "models", "compare", "config", "data", "miniworld"} <= {c[0] for c in COMMANDS if c}
    for name in registered():
        for stage in get_method(name).stages:
            assert [stage.name] in COMMANDS, f"method {name}: stage {stage.name} has no command"
            with pytest.raises(SystemExit):
                build_parser().parse_args([stage.name, "--help"])
            out = " ".join(capsys.readouterr().out.split()).lower()
            assert " ".join(stage.help.split())[:60].lower() in out, (name, stage.name)


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
