
import pytest
import yaml

from digzsl_ray.config import (
    CONFIG_DIR,
    ConfigError,
    PretrainConfig,
    explain,
    section_value,
)
from digzsl_ray.methods import get_method
from digzsl_ray.methods import load_run_config as load_config
from digzsl_ray.methods.digzsl.config import DigzslRunConfig as RunConfig


def test_defaults_are_miniworld():
    cfg = load_config()
    assert cfg.data.format == "miniworld"
    assert cfg.models.sd == "miniworld" and cfg.models.clip == "miniworld"


def test_overrides_are_typed():
    cfg = load_config(None, ["cdm.epochs=3", "tokens.gamma=0.9", 'prototypes.templates=["a {}.", "b {}."]',
                             "models.device=cpu"])
    assert cfg.cdm.epochs == 3 and isinstance(cfg.cdm.epochs, int)
    assert cfg.tokens.gamma == 0.9
    assert cfg.prototypes.templates == ["a {}.", "b {}."]


@pytest.mark.parametrize("override, key, got, expected", [
    ("cdm.lrr=1", "cdm.lrr", "1", "valid keys here: augment"),
    ("cdm.lr=abc", "cdm.lr", "'abc'", "valid number"),
    ("tokens.gamma=1.5", "tokens.gamma", "1.5", "<= 1.0"),
    ("models.device=tpu", "models.device", "'tpu'", "'auto', 'cpu' or 'cuda'"),
    ("cdm.epochs=0", "cdm.epochs", "0", ">= 1"),
])
def test_bad_values_name_key_value_and_expectation(override, key, got, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"'{key}'" in msg and got in msg and expected in msg


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["cdm.epochs"])


def test_unknown_config_file_lists_shipped(tmp_path):
    with pytest.raises(ConfigError, match="shipped configs.*: .*miniworld"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_error_names_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("cdm: {epochs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("cdm:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=f"in {p}"):
        load_config(p)


@pytest.mark.parametrize("name", ["miniworld", "cub", "awa2", "sun", "flo"])
def test_shipped_configs_validate_and_hold_overrides_only(name):
    path = CONFIG_DIR / f"{name}.yaml"
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text()) or {}
    defaults = RunConfig().model_dump()

    def walk(d, ref, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, ref[k], prefix + k + ".")
            else:
                assert v != ref[k], f"{name}.yaml restates the default of {prefix + k}"

    walk(raw, defaults)
    if name != "miniworld":
        assert cfg.models.sd == "sd15" and cfg.models.clip == "clip-vit-l14"
        assert cfg.data.format == "xlsa17"


def test_every_field_is_documented():
    for line in explain(RunConfig) + explain(PretrainConfig):
        assert "# None" not in line and line.split("#", 1)[1].strip(), line


def test_method_selects_config_class_and_unknown_method_is_an_error():
    cfg = load_config(None, ["method=digzsl"])
    assert type(cfg) is get_method("digzsl").config
    with pytest.raises(ConfigError, match="key 'method': got 'zerodiffx'; expected one of digzsl"):
        load_config(None, ["method=zerodiffx"])


def test_fingerprint_view_keeps_outputs_and_drops_runtime_fields():
    cfg = load_config(None, ["tokens.pool_max=7", "tokens.lr=0.01"])
    view = section_value(cfg, "tokens")
    assert view["lr"] == 0.01 and "pool_max" not in view and "num_gpus" not in view
    assert "workers" not in section_value(cfg, "cdm") and "epochs" in section_value(cfg, "cdm")
    assert section_value(cfg, "models.clip") == "miniworld"
    # a new learning setting is in by default: every field not marked runtime() is part of the view
    from digzsl_ray.config import affects_outputs
    marked = {k for k in type(cfg.tokens).model_fields if not affects_outputs(type(cfg.tokens), k)}
    assert marked == {"gradient_checkpointing", "pool_min", "pool_max", "num_gpus", "num_cpus", "shard_size",
                      "max_retries", "eval_images", "eval_seed"}


def test_yaml_merge_keys_may_override_and_explicit_tags_fail_cleanly(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("base: &b {epochs: 5, lr: 0.1}\n")
    p.write_text("cdm: {<<: {epochs: 5, lr: 0.1}, epochs: 10}\n")
    cfg = load_config(p)
    assert cfg.cdm.epochs == 10 and cfg.cdm.lr == 0.1
    p.write_text("cdm:\n  epochs: !!int 0b101\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(p)


def test_keys_another_methods_version_of_a_shared_section_adds_are_ignored(tmp_path):
    """A multi-label run directory written before serve.generate_* and live.epochs moved to DIG-ZSL's
    sections still loads (what `digzsl serve --run` reads); a key no method knows is still an error."""
    p = tmp_path / "config.yaml"
    p.write_text("method: multilabel\nserve: {port: 8123, generate_max_n: 8}\nlive: {epochs: 3, queue_size: 5}\n")
    cfg = load_config(p)
    assert cfg.method == "multilabel" and cfg.serve.port == 8123 and cfg.live.queue_size == 5
    assert not hasattr(cfg.serve, "generate_max_n")
    digzsl = load_config(p, ["method=digzsl"])  # DIG-ZSL keeps its own keys
    assert digzsl.serve.generate_max_n == 8 and digzsl.live.epochs == 3
    with pytest.raises(ConfigError, match="unknown key 'serve.generate_max_nn'"):
        load_config(p, ["serve.generate_max_nn=3"])
