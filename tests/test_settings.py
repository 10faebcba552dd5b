"""Settings: defaults < TOML file < environment, and errors that name the setting."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from config import ConfigError, load_settings, redacted_url
from config.settings import PROJECT_ROOT, Settings
from tests.support import python


def write_toml(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return {"RQKIT_CONFIG": str(path)}


def test_defaults_without_file_or_environment(tmp_path: Path) -> None:
    settings = load_settings(write_toml(tmp_path, ""))
    assert settings == Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queues == ("images", "email", "api", "maintenance", "default")
    assert settings.sqlalchemy_url.endswith("/var/content.db")


def test_environment_beats_file_and_file_beats_defaults(tmp_path: Path) -> None:
    env = write_toml(tmp_path, 'workers = 3\nqueues = ["a", "b"]\ndashboard_port = 9999\n')
    env |= {"RQKIT_WORKERS": "5", "REDIS_URL": "redis://127.0.0.1:7000/2"}
    settings = load_settings(env)
    assert (settings.workers, settings.queues, settings.dashboard_port) == (5, ("a", "b"), 9999)
    assert settings.redis_url == "redis://127.0.0.1:7000/2"


def test_switches_read_true_and_false_in_both_places(tmp_path: Path) -> None:
    assert load_settings(write_toml(tmp_path, "dashboard_read_only = true")).dashboard_read_only is True
    env = write_toml(tmp_path, "dashboard_read_only = true") | {"RQKIT_DASHBOARD_READ_ONLY": "off"}
    assert load_settings(env).dashboard_read_only is False


def test_rq_redis_url_is_read_when_redis_url_is_absent(tmp_path: Path) -> None:
    env = write_toml(tmp_path, "") | {"RQ_REDIS_URL": "redis://127.0.0.1:7001/0"}
    assert load_settings(env).redis_url == "redis://127.0.0.1:7001/0"


def test_queues_from_the_environment_are_a_comma_list(tmp_path: Path) -> None:
    env = write_toml(tmp_path, "") | {"RQKIT_QUEUES": "images, default"}
    assert load_settings(env).queues == ("images", "default")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RQKIT_WORKERS": "many"}, "RQKIT_WORKERS"),
        ({"RQKIT_WORKERS": "0"}, "RQKIT_WORKERS"),
        ({"RQKIT_SCHEDULER_INTERVAL": "-1"}, "RQKIT_SCHEDULER_INTERVAL"),
        ({"RQKIT_DASHBOARD_PORT": "70000"}, "RQKIT_DASHBOARD_PORT"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"RQKIT_QUEUES": "good,bad name"}, "RQKIT_QUEUES"),
        ({"RQKIT_QUEUES": ","}, "RQKIT_QUEUES"),
        ({"DATABASE_URL": "content.db"}, "DATABASE_URL"),
        ({"RQKIT_LOG_LEVEL": "LOUD"}, "RQKIT_LOG_LEVEL"),
        ({"RQKIT_DASHBOARD_USERNAME": "admin"}, "RQKIT_DASHBOARD_PASSWORD"),
        ({"RQKIT_SERIALIZER": "yaml"}, "RQKIT_SERIALIZER: must be pickle or json"),
        ({"RQKIT_DASHBOARD_READ_ONLY": "maybe"}, "RQKIT_DASHBOARD_READ_ONLY: expected true or false"),
    ],
)
def test_bad_environment_values_name_the_variable(tmp_path: Path, env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(write_toml(tmp_path, "") | env)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("wokers = 2", "wokers"),
        ("workers = 'two'", "workers in the config file"),
        ("workers = true", "workers in the config file"),
        ("dashboard_password = 'hunter2'", "dashboard_password"),
        ("redis_url = 'redis://:hunter2@127.0.0.1:6379/0'", "redis_url"),
        ("workers = ", "config file"),
        ("dashboard_read_only = 'yes please'", "dashboard_read_only in the config file"),
    ],
)
def test_bad_file_values_name_the_setting(tmp_path: Path, toml: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named) as error:
        load_settings(write_toml(tmp_path, toml))
    assert "hunter2" not in str(error.value)


def test_a_missing_config_file_named_in_the_environment_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RQKIT_CONFIG"):
        load_settings({"RQKIT_CONFIG": str(tmp_path / "nope.toml")})


def test_redacted_url_hides_the_password() -> None:
    assert redacted_url("redis://user:hunter2@cache:6380/1") == "redis://user:***@cache:6380/1"
    assert redacted_url("rediss://:hunter2@cache/0") == "rediss://:***@cache/0"
    assert redacted_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_rq_settings_module_uses_the_same_url_and_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:7002/3")
    monkeypatch.setenv("RQKIT_QUEUES", "email,default")
    import config.rq

    module = importlib.reload(config.rq)
    assert module.REDIS_URL == "redis://127.0.0.1:7002/3"
    assert module.QUEUES == ["email", "default"]


def test_the_example_file_loads_and_matches_the_defaults() -> None:
    example = PROJECT_ROOT / "config" / "settings.example.toml"
    assert load_settings({"RQKIT_CONFIG": str(example)}) == Settings()


def test_rq_with_bad_settings_exits_with_one_line(tmp_path: Path) -> None:
    done = python("-m", "rq.cli", "info", "-c", "config.rq", env={"RQKIT_QUEUES": "bad name"})
    assert done.returncode == 1
    assert (
        done.stderr == "config.rq: RQKIT_QUEUES: bad queue name 'bad name' (letters, digits, - and _ only)\n"
    )
