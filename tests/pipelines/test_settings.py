"""Settings: flags > FLEETSCORE_* environment > fleetscore.toml > defaults, typed, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetscore.errors import ConfigError
from fleetscore.pipelines.settings import load_settings, mask_url


def test_defaults_keep_state_under_dot_fleetscore(home: Path) -> None:
    s = load_settings()
    assert s.database_url == "sqlite:///.fleetscore/fleetscore.db"
    assert s.tracking_uri == "sqlite:///.fleetscore/mlflow.db"
    assert s.storage_url == ".fleetscore/blob"
    assert s.executor == "local"


def test_precedence_flag_over_env_over_file(home: Path) -> None:
    (home / "fleetscore.toml").write_text(
        'executor = "dask://filehost:1"\nstorage_url = "from-file"\ndatabase_url = "sqlite:///file.db"\n'
        "[training]\nnu = 0.2\n"
    )
    env = {"FLEETSCORE_STORAGE_URL": "from-env", "FLEETSCORE_DATABASE_URL": "sqlite:///env.db",
           "FLEETSCORE_TRAINING__NU": "0.3"}
    s = load_settings({"database_url": "sqlite:///flag.db", "training.nu": None}, environ=env)
    assert s.database_url == "sqlite:///flag.db"
    assert s.storage_url == "from-env"
    assert s.executor == "dask://filehost:1"
    assert s.training.nu == 0.3


def test_env_values_are_typed(home: Path) -> None:
    env = {"FLEETSCORE_TRAINING__FEATURES": "value,spread", "FLEETSCORE_WORKERS": "3",
           "FLEETSCORE_DATA_CHECKS__SENSOR_RANGES": '{"1": [10, 15]}'}
    s = load_settings(environ=env)
    assert s.training.features == ("value", "spread")
    assert s.workers == 3
    assert s.data_checks.sensor_ranges == {"1": (10.0, 15.0)}


def test_bad_values_name_the_setting(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"setting workers: cannot read 'many' as int"):
        load_settings(environ={"FLEETSCORE_WORKERS": "many"})
    with pytest.raises(ConfigError, match=r"unknown setting training\.nuu"):
        load_settings({"training.nuu": 1})
    with pytest.raises(ConfigError, match=r"executor: expected 'local', 'dask://HOST:PORT' or 'azureml'"):
        load_settings({"executor": "spark"})


def test_missing_or_broken_config_file(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_settings(config_file="nope.toml")
    (home / "bad.toml").write_text("executor = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_settings(config_file="bad.toml")


def test_secrets_are_masked() -> None:
    assert mask_url("postgresql://u:secret@h:5432/db") == "postgresql://u:****@h:5432/db"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
    conn = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=abc==;BlobEndpoint=http://x"
    assert mask_url(conn) == "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=****;BlobEndpoint=http://x"
    assert mask_url("az://c/p?sig=abc&sv=1") == "az://c/p?sig=****&sv=1"


def test_unknown_environment_variables_are_ignored_with_a_warning(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings(environ={"FLEETSCORE_EVENTHUB_CONNECTION_STRING": "x", "FLEETSCORE_TRAINING__NUU": "1",
                               "FLEETSCORE_TRAINING__NU": "0.05"})
    assert s.training.nu == 0.05
    assert "ignoring unknown environment variable FLEETSCORE_EVENTHUB_CONNECTION_STRING" in caplog.text
    assert "ignoring unknown environment variable FLEETSCORE_TRAINING__NUU" in caplog.text
