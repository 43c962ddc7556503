import pytest

from homefeed.config import ConfigError, load_config


def test_defaults_load_and_are_typed():
    cfg = load_config(environ={})
    assert cfg.instances.seq_len == 100
    assert cfg.registry.model_name == "homefeed-ranker"
    assert cfg.storage.root == ".homefeed"


def test_overlay_file_and_environment_apply_in_order(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  epochs: 7\n  batch_size: 64\n")
    cfg = load_config([overlay], environ={"HOMEFEED__TRAIN__EPOCHS": "9"})
    assert cfg.train.epochs == 9  # the environment wins over the file
    assert cfg.train.batch_size == 64


def test_unknown_key_fails_naming_its_path(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        load_config([overlay], environ={})


def test_wrong_type_fails_naming_its_path():
    with pytest.raises(ConfigError, match=r"instances\.negative_rate"):
        load_config(environ={"HOMEFEED__INSTANCES__NEGATIVE_RATE": "lots"})


def test_unknown_model_and_head_are_rejected():
    with pytest.raises(ConfigError, match="unknown model"):
        load_config(environ={}, overrides={"train": {"model": "resnet"}})
    with pytest.raises(ConfigError, match="unknown heads"):
        load_config(environ={}, overrides={"ranking": {"utility": {"save": 1.0}}})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HOMEFEED__SIMULATOR__DAYS", "[1", r"HOMEFEED__SIMULATOR__DAYS='\[1' is not a valid YAML value"),
        ("HOMEFEED__TRAIN__EPOCHS", "true", r"train\.epochs: .*expected a number, got true"),
        ("HOMEFEED__TRAIN__LEARNING_RATE", ".inf", r"train\.learning_rate"),
        ("HOMEFEED__INSTANCES__NEGATIVE_RATE", ".nan", r"instances\.negative_rate"),
    ],
    ids=["bad-yaml", "bool-as-int", "infinity", "nan"],
)
def test_environment_values_are_strict_and_name_the_variable_or_key(variable, value, message):
    # Before: a YAML traceback, epochs=true read as 1, learning_rate=.inf accepted (issue 21, item 11).
    with pytest.raises(ConfigError, match=message):
        load_config(environ={variable: value})


def test_booleans_still_set_boolean_keys():
    assert load_config(environ={"HOMEFEED__VALIDATION__DRIFT__ENABLED": "false"}).validation.drift.enabled is False


def test_the_sequence_store_takes_a_redis_or_sqlite_url_only():
    assert load_config(environ={"HOMEFEED__SERVING__SEQUENCE_STORE": "redis://127.0.0.1:6379/0"}).serving.sequence_store.startswith("redis://")
    with pytest.raises(ConfigError, match="serving.sequence_store"):
        load_config(environ={"HOMEFEED__SERVING__SEQUENCE_STORE": "memcached://127.0.0.1:11211"})


def test_an_empty_environment_value_means_the_default():
    """docker/.env.example leaves HOMEFEED__SERVING__TOKEN= empty; YAML would read it as null and
    refuse the config (the stack's DAG failed to import that way)."""
    cfg = load_config(environ={"HOMEFEED__SERVING__TOKEN": "", "HOMEFEED__SERVING__SEQUENCE_STORE": "", "HOMEFEED__TRAIN__EPOCHS": ""})
    assert cfg.serving.token == "" and cfg.serving.sequence_store == "" and cfg.train.epochs == load_config(environ={}).train.epochs


def test_a_recorded_config_redacts_secrets_and_keeps_everything_else():
    from homefeed.config import REDACTED, load_config

    cfg = load_config(environ={"HOMEFEED__SERVING__TOKEN": "s3cret-token"})
    recorded = cfg.redacted()
    assert recorded["serving"]["token"] == REDACTED and cfg.serving.token == "s3cret-token"
    assert "s3cret-token" not in str(recorded) and recorded["serving"]["port"] == cfg.serving.port
    assert load_config(environ={}).redacted()["serving"]["token"] == ""  # unset: nothing to hide, nothing marked


def test_text_keys_from_the_environment_are_taken_verbatim():
    from homefeed.config import load_config

    assert load_config(environ={"HOMEFEED__SERVING__TOKEN": "123456"}).serving.token == "123456"
    assert load_config(environ={"HOMEFEED__SERVING__TOKEN": "s3cret #2024"}).serving.token == "s3cret #2024"
    assert load_config(environ={"HOMEFEED__TRAIN__EPOCHS": "4"}).train.epochs == 4  # numbers are still parsed


def test_every_default_has_one_home():
    """Before: config.py's models and default.yaml disagreed in 11 values (no gates at all from
    Config(), three epochs against two) (issue 36, item 2). Now the models hold every default, and
    no file shipped in the package states one again."""
    from pathlib import Path

    import yaml

    from homefeed.config import Config

    assert load_config(environ={}) == Config()
    sections = set(Config.model_fields)
    package = Path(__file__).resolve().parents[2] / "homefeed"
    for path in [*package.rglob("*.yaml"), *package.rglob("*.yml")]:
        stated = yaml.safe_load(path.read_text())
        assert not (isinstance(stated, dict) and sections & set(stated)), f"{path} states config defaults again"
    defaults = Config()
    assert defaults.gates.min_auc and defaults.train.epochs == 2  # what `make run` has always run with


def test_homefeed_config_prints_the_effective_config_with_secrets_redacted(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from homefeed.cli import app

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  epochs: 5\n")
    result = CliRunner().invoke(app, ["config", "--config", str(overlay)], env={"HOMEFEED__SERVING__TOKEN": "s3cret-token"})
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["train"]["epochs"] == 5 and printed["gates"]["min_auc"] == {"repin": 0.55}
    assert "s3cret-token" not in result.output and printed["serving"]["token"] == "***redacted***"
    bad = CliRunner().invoke(app, ["config"], env={"HOMEFEED__TRAIN__EPOCHZ": "5"})
    assert bad.exit_code != 0 and "train.epochz" in bad.output
