"""Settings: defaults < TOML file < environment, and errors that name the setting."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import tomllib
from pathlib import Path

import pytest

from config import ConfigError, load_settings, redacted_url
from config.settings import PROJECT_ROOT, SECRETS, TABLES, Settings
from launcher.redis_server import free_port
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
    assert redacted_url("redis://:p@ss@cache/0") == "redis://:***@cache/0"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("unix:///run/redis.sock?db=0&password=hunter2", "unix:///run/redis.sock?db=0&password=***"),
        ("redis://cache/0?password=hunter2", "redis://cache/0?password=***"),
        ("redis://cache/0?pass%77ord=hunter2", "redis://cache/0?pass%77ord=***"),
        (
            "redis://cache/0?sentinel_password=hunter2&socket_timeout=2",
            "redis://cache/0?sentinel_password=***&socket_timeout=2",
        ),
        (
            "postgresql://app:hunter2@db/app?sslpassword=hunter2",
            "postgresql://app:***@db/app?sslpassword=***",
        ),
    ],
)
def test_a_credential_anywhere_in_a_url_is_hidden_and_kept_out_of_the_file(
    url: str, shown: str, tmp_path: Path
) -> None:
    assert redacted_url(url) == shown and "hunter2" not in shown
    config = tmp_path / "settings.toml"
    config.write_text(f"redis_url = {json.dumps(url)}\n")
    with pytest.raises(ConfigError, match="belongs in the environment"):
        load_settings({"RQKIT_CONFIG": str(config)})


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


DEFAULT_SCHEDULE = set(Settings().schedule)


def test_a_schedule_table_in_the_file_adds_an_entry_and_keeps_the_defaults(tmp_path: Path) -> None:
    env = write_toml(tmp_path, '[schedule.nightly-report]\njob = "sleep"\nargs = [0]\ncron = "0 6 * * *"\n')
    schedule = load_settings(env).schedule
    assert set(schedule) == DEFAULT_SCHEDULE | {"nightly-report"}
    assert schedule["expire-sessions"] == Settings().schedule["expire-sessions"]


def test_a_table_of_a_defaults_name_replaces_it_whole(tmp_path: Path) -> None:
    toml = (
        '[schedule.expire-sessions]\njob = "expire-sessions"\nevery = "30m"\n'
        '[cache_targets.thumbnails]\nkind = "disk"\nmax_age_days = 30\n'
    )
    settings = load_settings(write_toml(tmp_path, toml))
    assert settings.schedule["expire-sessions"] == {"job": "expire-sessions", "every": "30m"}
    assert set(settings.schedule) == DEFAULT_SCHEDULE
    assert settings.cache_targets == {"thumbnails": {"kind": "disk", "max_age_days": 30}}


def test_enabled_false_switches_an_entry_off_default_or_not(tmp_path: Path) -> None:
    toml = (
        "[schedule.sweep-caches]\nenabled = false\n"
        '[schedule.report]\njob = "sleep"\nargs = [0]\nevery = 60\nenabled = false\n'
        "[session_stores.default]\nenabled = false\n"
        '[session_stores.legacy]\nkind = "sql"\npreset = "rails"\n'
        "[cache_targets.thumbnails]\nenabled = false\n"
    )
    settings = load_settings(write_toml(tmp_path, toml))
    # A disabled schedule entry stays in the settings, so that `schedule list` shows it as disabled.
    assert settings.schedule["sweep-caches"] == {**Settings().schedule["sweep-caches"], "enabled": False}
    assert settings.schedule["report"]["enabled"] is False
    # A disabled store or target is gone: the maintenance jobs don't see it.
    assert settings.session_stores == {"legacy": {"kind": "sql", "preset": "rails"}}
    assert settings.cache_targets == {}


@pytest.mark.parametrize("name", ["schedule", "session_stores", "cache_targets"])
def test_enabled_must_be_true_or_false(tmp_path: Path, name: str) -> None:
    message = f"{name} in the config file: default.enabled must be true or false, got 'no'"
    with pytest.raises(ConfigError, match=message):
        load_settings(write_toml(tmp_path, f'[{name}.default]\nenabled = "no"\n'))


def test_the_environment_replaces_a_table_setting_whole(tmp_path: Path) -> None:
    env = write_toml(tmp_path, '[session_stores.legacy]\nkind = "sql"\npreset = "rails"\n')
    env |= {"RQKIT_SESSION_STORES": '{"only": {"kind": "sql", "preset": "flask"}}'}
    env |= {"RQKIT_SCHEDULE": '{"tick": {"job": "sleep", "args": [0], "every": 60}}'}
    settings = load_settings(env)
    assert settings.session_stores == {"only": {"kind": "sql", "preset": "flask"}}
    assert set(settings.schedule) == {"tick"}


def test_the_example_file_shows_every_setting_the_file_may_set() -> None:
    """Each field but the secrets appears as `name = ...` or a `[name.X]` table, commented or not."""
    text = (PROJECT_ROOT / "config" / "settings.example.toml").read_text()
    fields = [field.name for field in dataclasses.fields(Settings) if field.name not in SECRETS]
    missing = [name for name in fields if not re.search(rf"^(# ?)?({name} =|\[{name}\.)", text, re.MULTILINE)]
    assert missing == []


def test_the_defaults_the_example_file_shows_in_comments_are_the_codes() -> None:
    text = (PROJECT_ROOT / "config" / "settings.example.toml").read_text()
    block = text.split("# The defaults, for reference")[1].split("# Examples:")[0].splitlines()[1:]
    shown = tomllib.loads("\n".join(re.sub(r"^# ?|\s+#.*$", "", line) for line in block))
    defaults = Settings()
    assert shown == {name: getattr(defaults, name) for name in TABLES}


@pytest.mark.parametrize(
    "url", ["redis://:{pw}@127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/0?password={pw}"]
)
def test_an_unreachable_redis_is_named_without_its_password(url: str) -> None:
    url = url.format(pw="hunter2", port=free_port())
    commands = (
        ["cli.py", "enqueue", "sleep", "0"],
        ["cli.py", "info"],
        ["-m", "rq.cli", "info", "-c", "config.rq"],
    )
    for args in commands:
        done = python(*args, env={"REDIS_URL": url})
        assert done.returncode != 0 and "hunter2" not in done.stdout + done.stderr, args
