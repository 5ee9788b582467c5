"""Unit tests for kiq.config, and the CLI's handling of a bad config or an app that fails to load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kiq.config import Config, ConfigError, load, parse_queues

ROOT = Path(__file__).resolve().parent.parent

FULL = """\
redis_url: redis://10.0.0.5:6380/2
namespace: "shop"
require: [myapp.jobs, myapp.more_jobs]
processes: 2
concurrency: 12
queues: [[critical, 3], [default, 1], [low, 1]]
timeout: 30
max_memory_mb: 512
max_jobs: 1000
tag: blue
metrics: {host: 0.0.0.0, port: 9300}
log: {format: json, level: debug}
heartbeat_interval: 2
heartbeat_ttl: 30
boot_timeout: 90
worker_timeout: 10
metrics_retention: 86400
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KIQ_REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("KIQ_WEB_PASSWORD", raising=False)


def write(tmp_path: Path, text: str, name: str = "kiq.yml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load_yaml(tmp_path: Path, settings: dict[str, Any]) -> Config:
    return load(write(tmp_path, yaml.safe_dump(settings)))


# Defaults, file and overrides


def test_defaults_without_file_or_flags():
    assert load() == Config(
        redis_url="redis://127.0.0.1:6379/0",
        namespace="",
        require=[],
        processes=1,
        concurrency=10,
        queues=[("default", 1)],
        strict=True,
        timeout=25.0,
        max_memory_mb=0,
        max_jobs=0,
        metrics_host="127.0.0.1",
        metrics_port=9191,
        log_format="auto",
        log_level="info",
        tag="",
        heartbeat_interval=5.0,
        heartbeat_ttl=60.0,
        boot_timeout=60.0,
        worker_timeout=30.0,
        metrics_retention=72 * 3600,
    )


def test_empty_file_gives_the_defaults(tmp_path):
    assert load(write(tmp_path, "")) == load()


def test_every_documented_key_is_read_from_the_file(tmp_path):
    config = load(write(tmp_path, FULL))
    assert config == Config(
        redis_url="redis://10.0.0.5:6380/2",
        namespace="shop",
        require=["myapp.jobs", "myapp.more_jobs"],
        processes=2,
        concurrency=12,
        queues=[("critical", 3), ("default", 1), ("low", 1)],
        strict=False,
        timeout=30.0,
        max_memory_mb=512,
        max_jobs=1000,
        metrics_host="0.0.0.0",
        metrics_port=9300,
        log_format="json",
        log_level="debug",
        tag="blue",
        heartbeat_interval=2.0,
        heartbeat_ttl=30.0,
        boot_timeout=90.0,
        worker_timeout=10.0,
        metrics_retention=86400,
    )
    assert config.queue_names == ["critical", "default", "low"]


def test_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path, FULL)
    config = load(path, {"processes": 4, "concurrency": 3, "queues": ["only"], "require": ["x.jobs"],
                         "namespace": "", "timeout": 1.5})
    assert (config.processes, config.concurrency, config.timeout) == (4, 3, 1.5)
    assert config.queues == [("only", 1)] and config.strict
    assert config.require == ["x.jobs"]
    assert config.namespace == ""
    assert config.max_jobs == 1000  # untouched keys keep the file's value


def test_none_overrides_keep_the_files_value(tmp_path):
    config = load(write(tmp_path, FULL), {"processes": None, "log.level": None})
    assert config.processes == 2
    assert config.log_level == "debug"


def test_section_override_keeps_the_files_other_keys(tmp_path):
    config = load(write(tmp_path, FULL), {"log.level": "warning", "metrics.port": 0})
    assert (config.log_level, config.log_format) == ("warning", "json")
    assert (config.metrics_host, config.metrics_port) == ("0.0.0.0", 0)


def test_section_override_without_that_section_in_the_file(tmp_path):
    config = load(write(tmp_path, "processes: 3\n"), {"log.format": "console"})
    assert (config.log_format, config.log_level) == ("console", "info")


def test_numbers_written_as_strings_are_accepted(tmp_path):
    config = load_yaml(tmp_path, {"processes": "3", "timeout": "2.5", "metrics": {"port": "9400"}})
    assert (config.processes, config.timeout, config.metrics_port) == (3, 2.5, 9400)


def test_require_as_comma_separated_string(tmp_path):
    assert load_yaml(tmp_path, {"require": "a.jobs,b.jobs"}).require == ["a.jobs", "b.jobs"]


# redis_url precedence


@pytest.mark.parametrize(
    ("flag", "in_file", "kiq_env", "env", "expected"),
    [
        ("redis://flag/0", "redis://file/0", "redis://kiqenv/0", "redis://env/0", "redis://flag/0"),
        (None, "redis://file/0", "redis://kiqenv/0", "redis://env/0", "redis://file/0"),
        (None, None, "redis://kiqenv/0", "redis://env/0", "redis://kiqenv/0"),
        (None, None, None, "redis://env/0", "redis://env/0"),
        (None, None, None, None, "redis://127.0.0.1:6379/0"),
        ("redis://flag/0", None, "redis://kiqenv/0", None, "redis://flag/0"),
    ],
    ids=["flag", "file", "KIQ_REDIS_URL", "REDIS_URL", "default", "flag-over-env"],
)
def test_redis_url_precedence(tmp_path, monkeypatch, flag, in_file, kiq_env, env, expected):
    if kiq_env:
        monkeypatch.setenv("KIQ_REDIS_URL", kiq_env)
    if env:
        monkeypatch.setenv("REDIS_URL", env)
    path = write(tmp_path, yaml.safe_dump({"redis_url": in_file} if in_file else {"processes": 1}))
    assert load(path, {"redis_url": flag}).redis_url == expected


@pytest.mark.parametrize("name", ["KIQ_REDIS_URL", "REDIS_URL"])
def test_a_bad_url_from_the_environment_names_its_variable(tmp_path, monkeypatch, name):
    monkeypatch.delenv("KIQ_REDIS_URL", raising=False)
    monkeypatch.setenv(name, "nonsense")
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, "processes: 1\n"))
    assert raised.value.key == name


# Queues


@pytest.mark.parametrize(
    ("value", "queues", "strict"),
    [
        (["critical", "default", "low"], [("critical", 1), ("default", 1), ("low", 1)], True),
        ("critical", [("critical", 1)], True),
        ([["critical", 3], ["default", 1]], [("critical", 3), ("default", 1)], False),
        (["critical,3", "default,1"], [("critical", 3), ("default", 1)], False),
        ("critical,3", [("critical", 3)], False),
        (["critical, 3", " default "], [("critical", 3), ("default", 1)], False),
        ([["critical", 3], "default,2", "low"], [("critical", 3), ("default", 2), ("low", 1)], False),
        ([["critical", "4"], ["low"]], [("critical", 4), ("low", 1)], False),
    ],
    ids=["strict", "one-name", "pairs", "strings", "one-string", "spaces", "mixed", "string-weight"],
)
def test_queue_forms(value, queues, strict):
    assert parse_queues(value) == (queues, strict)


def test_queues_from_the_file_and_from_repeated_flags(tmp_path):
    path = write(tmp_path, "queues: [[critical, 3], default]\n")
    config = load(path)
    assert (config.queues, config.strict) == ([("critical", 3), ("default", 1)], False)
    config = load(path, {"queues": ["critical,5", "low"]})  # -q critical,5 -q low
    assert (config.queues, config.strict) == ([("critical", 5), ("low", 1)], False)


@pytest.mark.parametrize(
    "value",
    [
        ["default", "default"],
        ["default", ["default", 2]],
        ["a,1", "b", "a,3"],
        [["a", 0]],
        "a,0",
        "a,1001",
        [["a", 10**9]],
        [["a", -1]],
        "a,-2",
        [["a", "x"]],
        "a,x",
        "a,2.5",
        [["a", None]],
        ["a,1,2"],
        [["a", 1, 2]],
        [[]],
        [["", 1]],
        [""],
        [",2"],
        [[3, 1]],
        [5],
        [],
        5,
        None,
        {"critical": 3},
    ],
)
def test_bad_queues_are_rejected(value):
    with pytest.raises(ConfigError) as raised:
        parse_queues(value)
    assert raised.value.key == "queues"


@pytest.mark.parametrize("weight", [2.5, True, 1.5])
def test_non_integer_weights_in_pairs_are_rejected(weight):
    with pytest.raises(ConfigError) as raised:
        parse_queues([["critical", weight], "default"])
    assert raised.value.key == "queues"


def test_the_web_dashboards_user_and_password_from_the_file_or_the_environment(tmp_path, monkeypatch):
    assert (load().web_user, load().web_password) == ("kiq", "")
    config = load_yaml(tmp_path, {"web": {"user": "ops", "password": "pw from file"}})
    assert (config.web_user, config.web_password) == ("ops", "pw from file")
    monkeypatch.setenv("KIQ_WEB_PASSWORD", "pw from env")
    assert load().web_password == "pw from env"
    assert load_yaml(tmp_path, {"web": {"password": "pw from file"}}).web_password == "pw from file"


# Invalid settings: each names its key


def test_tracing_is_off_by_default_and_on_with_true_or_a_mapping_of_its_options(tmp_path):
    default = load()
    assert (default.tracing, default.tracing_span_naming, default.tracing_propagation_style) == (
        False, "queue", "link")
    assert load_yaml(tmp_path, {"tracing": True}).tracing is True
    config = load_yaml(tmp_path, {"tracing": {"span_naming": "job_class", "propagation_style": "child"}})
    assert (config.tracing, config.tracing_span_naming, config.tracing_propagation_style) == (
        True, "job_class", "child")
    assert load_yaml(tmp_path, {"tracing": False}).tracing is False


def test_tracing_without_the_opentelemetry_api_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ConfigError, match=r"^tracing: needs the OpenTelemetry API: pip install 'kiq\[otel\]"):
        load_yaml(tmp_path, {"tracing": True})
    assert load_yaml(tmp_path, {"tracing": False}).tracing is False


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"strict": True}, "strict"),
        ({"log_level": "info"}, "log_level"),
        ({"log": {"colour": "red"}}, "log.colour"),
        ({"metrics": {"hots": "x"}}, "metrics.hots"),
        ({"log": "info"}, "log"),
        ({"metrics": 9191}, "metrics"),
        ({"metrics": None}, "metrics"),
        ({"processes": "many"}, "processes"),
        ({"processes": True}, "processes"),
        ({"concurrency": False}, "concurrency"),
        ({"timeout": True}, "timeout"),
        ({"max_jobs": True}, "max_jobs"),
        ({"metrics": {"port": True}}, "metrics.port"),
        ({"processes": [2]}, "processes"),
        ({"processes": None}, "processes"),
        ({"processes": {"n": 2}}, "processes"),
        ({"processes": 0}, "processes"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": -3}, "concurrency"),
        ({"timeout": -1}, "timeout"),
        ({"max_memory_mb": -1}, "max_memory_mb"),
        ({"max_jobs": -5}, "max_jobs"),
        ({"metrics": {"port": 70000}}, "metrics.port"),
        ({"metrics": {"port": -1}}, "metrics.port"),
        ({"metrics": {"port": "http"}}, "metrics.port"),
        ({"metrics": {"host": 127}}, "metrics.host"),
        ({"namespace": 5}, "namespace"),
        ({"namespace": ["a"]}, "namespace"),
        ({"redis_url": 5}, "redis_url"),
        ({"redis_url": "localhost:6379"}, "redis_url"),
        ({"tag": ["x"]}, "tag"),
        ({"require": [1]}, "require"),
        ({"require": {"a": 1}}, "require"),
        ({"require": 5}, "require"),
        ({"log": {"level": "loud"}}, "log.level"),
        ({"log": {"level": 3}}, "log.level"),
        ({"log": {"format": "xml"}}, "log.format"),
        ({"queues": []}, "queues"),
        ({"queues": [["a", 0]]}, "queues"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"heartbeat_interval": True}, "heartbeat_interval"),
        ({"heartbeat_ttl": -1}, "heartbeat_ttl"),
        ({"heartbeat_ttl": 5}, "heartbeat_ttl"),
        ({"heartbeat_interval": 30, "heartbeat_ttl": 20}, "heartbeat_ttl"),
        ({"boot_timeout": 0}, "boot_timeout"),
        ({"boot_timeout": "soon"}, "boot_timeout"),
        ({"worker_timeout": -1}, "worker_timeout"),
        ({"metrics_retention": 0}, "metrics_retention"),
        ({"metrics_retention": 28 * 86400}, "metrics_retention"),
        ({"metrics_retention": "3 days"}, "metrics_retention"),
        ({"web": "secret"}, "web"),
        ({"web": {"pass": "x"}}, "web.pass"),
        ({"web": {"password": 1234}}, "web.password"),
        ({"tracing": "yes"}, "tracing"),
        ({"tracing": ["on"]}, "tracing"),
        ({"tracing": {"span_naming": "class"}}, "tracing.span_naming"),
        ({"tracing": {"propagation_style": "none"}}, "tracing.propagation_style"),
        ({"tracing": {"sampler": "always"}}, "tracing.sampler"),
    ],
)
def test_invalid_setting_names_its_key(tmp_path, settings, key):
    with pytest.raises(ConfigError) as raised:
        load_yaml(tmp_path, settings)
    assert raised.value.key == key
    assert str(raised.value).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"processes": 0}, "processes"), ({"log.level": "loud"}, "log.level"), ({"queues": ["a,0"]}, "queues"),
     ({"redis_url": "nowhere"}, "redis_url"), ({"surprise": 1}, "surprise")],
)
def test_invalid_override_names_its_key(overrides, key):
    with pytest.raises(ConfigError) as raised:
        load(None, overrides)
    assert raised.value.key == key


@pytest.mark.parametrize(
    ("url", "says"),
    [("http://127.0.0.1:6379/0", "schemes"), ("redis://127.0.0.1:99999/0", "out of range"),
     ("redis://127.0.0.1:port/0", "integer"), ("sentinel://127.0.0.1:x/mymaster", "int"),
     ("redis+cluster://127.0.0.1:7000/2", "database 0 only")],
)
def test_a_redis_url_that_redis_py_would_refuse_is_a_config_error(url, says):
    """Found when the config is read, in one line naming the key, not as a traceback at start."""
    with pytest.raises(ConfigError) as raised:
        load(None, {"redis_url": url})
    assert raised.value.key == "redis_url"
    assert says in str(raised.value) and "redis://127.0.0.1:6379/0" in str(raised.value)


@pytest.mark.parametrize("url", ["redis://kiq:s3/cr@127.0.0.1/0", "redis://:s3#cr@127.0.0.1/0",
                                 "unix://kiq:s3?cr@/run/redis.sock"])
def test_a_raw_special_character_in_the_password_is_a_bad_url_that_hides_it(url):
    """redis-py would read the URL cut short and name part of the password in its error."""
    with pytest.raises(ConfigError) as raised:
        load(None, {"redis_url": url})
    assert raised.value.key == "redis_url"
    assert "percent-encode" in str(raised.value) and "s3" not in str(raised.value)


@pytest.mark.parametrize(
    ("settings", "key"),
    [({"processes": 2.5}, "processes"), ({"max_jobs": 0.5}, "max_jobs"),
     ({"metrics": {"port": 9191.5}}, "metrics.port"), ({"metrics_retention": 3600.5}, "metrics_retention")],
)
def test_fractional_value_for_an_integer_key_is_rejected(tmp_path, settings, key):
    with pytest.raises(ConfigError) as raised:
        load_yaml(tmp_path, settings)
    assert raised.value.key == key


@pytest.mark.parametrize(
    ("text", "key"),
    [("timeout: .nan\n", "timeout"), ("heartbeat_interval: .nan\n", "heartbeat_interval"),
     ("heartbeat_ttl: .inf\n", "heartbeat_ttl"), ("heartbeat_ttl: .nan\n", "heartbeat_ttl")],
)
def test_non_finite_numbers_are_rejected(tmp_path, text, key):
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, text))
    assert raised.value.key == key


@pytest.mark.parametrize(
    "text",
    ["processes: [1\n", "a: b: c\n", "queues: [critical, 3\n", "\tprocesses: 1\n"],
    ids=["unclosed", "nested-colon", "unclosed-queues", "tab"],
)
def test_bad_yaml(tmp_path, text):
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, text))
    assert raised.value.key == "config"
    assert "YAML" in str(raised.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read") as raised:
        load(str(tmp_path / "nope.yml"))
    assert raised.value.key == "config"


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read") as raised:
        load(str(tmp_path))  # a directory cannot be read as a file, even by root
    assert raised.value.key == "config"


@pytest.mark.parametrize("text", ["- processes\n- 2\n", "just a string\n", "42\n"])
def test_file_that_is_not_a_mapping(tmp_path, text):
    with pytest.raises(ConfigError, match="mapping") as raised:
        load(write(tmp_path, text))
    assert raised.value.key == "config"


# Through the CLI


def kiq_start(tmp_path: Path, *args: str, redis_url: str = "redis://127.0.0.1:1/0",
              timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KIQ_NAMESPACE")}
    env["KIQ_REDIS_URL"] = redis_url
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "kiq", "start", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("text", "key"),
    [("bogus: 1\n", "bogus"), ("log: {level: loud}\n", "log.level"), ("processes: 0\n", "processes"),
     ("metrics: {port: yes}\n", "metrics.port"), ("queues: [[a, 0]]\n", "queues"), ("- a\n", "config"),
     ("redis_url: http://127.0.0.1:6379/0\n", "redis_url"),
     ("redis_url: redis://127.0.0.1:99999/0\n", "redis_url"),
     ("shards: {main: 'redis://127.0.0.1:x/0'}\n", "shards.main.url"),
     ("processes: 1001\n", "processes"), ("concurrency: 10001\n", "concurrency"),
     ("heartbeat_ttl: 1e300\n", "heartbeat_ttl"), ("heartbeat_interval: 1e12\n", "heartbeat_interval"),
     (b"processes: \xff\n", "config"), ("\ufeffprocesses: 2\n".encode("utf-16"), "config"),
     ("processes: " + "[" * 5000 + "]" * 5000 + "\n", "config"),
     ("processes: " + "[" * 50 + "]" * 50 + "\n", "processes"),
     ("processes: " + "x" * 100_000 + "\n", "processes"),
     ("processes: " + "1" * 5000 + "\n", "config"), ("processes: " + "1" * 400 + "\n", "processes"),
     ("heartbeat_ttl: " + "1" * 400 + "\n", "heartbeat_ttl"),
     ("processes: [&a0 [x, x, x, x, x, x, x, x, x], "
      + ", ".join(f"&a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 9)) + "]\n", "processes")],
    ids=repr,
)
def test_cli_bad_config_exits_2_with_one_line_naming_the_key(tmp_path, text, key):
    """One short line: a value is shown cut short, whatever its size (a 400-byte file of YAML
    aliases holds a list of 9^9 items)."""
    path = tmp_path / "bad.yml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = kiq_start(tmp_path, "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{key}:" in lines[0]
    assert len(lines[0]) < 300, lines[0]
    assert result.stdout == ""


def test_cli_bad_flag_value_exits_2(tmp_path):
    result = kiq_start(tmp_path, "-q", "critical,0", "-q", "default")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "queues:" in line


def test_cli_missing_config_file_exits_2(tmp_path):
    result = kiq_start(tmp_path, "-c", str(tmp_path / "missing.yml"))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "config:" in line and "missing.yml" in line


def test_cli_bad_yaml_is_one_line(tmp_path):
    result = kiq_start(tmp_path, "-c", write(tmp_path, "processes: [1\nfoo: : bar\n", "bad.yml"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "config:" in lines[0]


def test_cli_require_that_fails_to_import_exits_3(tmp_path, redis_server):
    (tmp_path / "broken_jobs_for_cli.py").write_text("raise RuntimeError('boom at import')\n")
    result = kiq_start(tmp_path, "-r", "broken_jobs_for_cli", redis_url=redis_server.url)
    assert result.returncode == 3, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("kiq:")]
    assert "broken_jobs_for_cli" in line and "RuntimeError" in line and "boom at import" in line


def test_cli_require_of_a_missing_module_exits_3(tmp_path, redis_server):
    result = kiq_start(tmp_path, "-r", "no_such_module_for_cli", redis_url=redis_server.url)
    assert result.returncode == 3, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("kiq:")]
    assert "no_such_module_for_cli" in line and "ModuleNotFoundError" in line


def test_metrics_retention_says_why_it_has_a_limit(tmp_path):
    """Sidekiq's histogram keys name a minute by its day of the month: kept 28 days, one month's
    record would add up with the next month's."""
    assert load_yaml(tmp_path, {"metrics_retention": 27 * 86400}).metrics_retention == 27 * 86400
    with pytest.raises(ConfigError) as raised:
        load_yaml(tmp_path, {"metrics_retention": 27 * 86400 + 1})
    assert str(raised.value) == ("metrics_retention: must be from 1 to 2332800 seconds (27 days): Sidekiq's "
                                 "histogram keys name a minute by its day of the month only")


# Prefetch


@pytest.mark.parametrize(("text", "expected"), [("prefetch: auto", None), ("prefetch: 0", 0),
                                                ("prefetch: 50", 50), ("", None)])
def test_prefetch_is_auto_or_a_number(tmp_path, text, expected):
    assert load(write(tmp_path, text)).prefetch == expected


@pytest.mark.parametrize("value", ["-1", "2.5", "true", "lots", "[1]", "10001", "1000000000"])
def test_a_bad_prefetch_is_rejected(tmp_path, value):
    expected = r"^prefetch: must be auto or a whole number of jobs from 0 to 10,000, not "
    with pytest.raises(ConfigError, match=expected):
        load(write(tmp_path, f"prefetch: {value}"))
