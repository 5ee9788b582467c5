"""grafana/kiq.json: importable JSON whose queries use only metrics and labels that kiq exports.

The exported names are read from kiq itself: the metric objects of kiq.metrics
(worker, supervisor and master samples) and what kiq.exporter.RedisCollector
yields when it collects from a real Redis (the values the master reads per scrape).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, RedisServer
from prometheus_client.metrics import MetricWrapperBase

import kiq.metrics
from kiq.client import Client
from kiq.connection import connect
from kiq.exporter import RedisCollector

DASHBOARD = ROOT / "grafana" / "kiq.json"
DATASOURCE = "${datasource}"
FILTERS = ("queue", "class")

METRIC = re.compile(r"(?<![\w:])kiq_[a-z_]+")
SELECTOR = re.compile(r"(?<![\w:])(kiq_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)\s*\(")
LABEL_VALUES = re.compile(r"label_values\((.*),\s*(\w+)\s*\)\s*$")
REFERENCE = re.compile(r"\$\{?(\w+)")

# Sample names each metric type exposes in multiprocess mode (no _created samples there).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
# Labels Prometheus adds to every series it scrapes, and the variables Grafana defines itself.
TARGET_LABELS = {"instance", "job"}
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    with open(path) as dashboard:
        return json.load(dashboard)  # type: ignore[no-any-return]


def all_panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in node.get("panels", []):
        yield panel
        yield from all_panels(panel)


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in dashboard.get("templating", {}).get("list", [])}


def variable_query(var: dict[str, Any]) -> str:
    """A query variable's PromQL; Grafana 10 stores it as an object, older versions as a string."""
    query = var.get("query", "")
    return str(query.get("query", "") if isinstance(query, dict) else query)


def expressions(dashboard: dict[str, Any]) -> list[str]:
    found = [target["expr"] for panel in all_panels(dashboard) for target in panel.get("targets", [])
             if target.get("expr")]
    found += [variable_query(var) for var in variables(dashboard).values() if var.get("type") == "query"]
    return found


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def groupings(expr: str) -> Iterator[tuple[set[str], str]]:
    """(labels, body) for each ``by (...) (body)`` / ``without (...) (body)``."""
    for match in GROUPING.finditer(expr):
        depth, start = 1, match.end()
        end = start
        while depth and end < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        yield {label.strip() for label in match.group(1).split(",") if label.strip()}, expr[start:end - 1]


def worker_side() -> dict[str, set[str]]:
    """Sample names and labels of the metrics in kiq.metrics, read from the metric objects."""
    exported: dict[str, set[str]] = {}
    for metric in vars(kiq.metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        for family in metric.describe():
            for suffix in SUFFIXES[family.type]:
                exported[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return exported


def master_side(redis_url: str) -> dict[str, set[str]]:
    """Sample names and labels RedisCollector yields for a Redis holding one waiting job."""
    client = Client(redis_url, namespace="")
    client.enqueue("GrafanaProbeJob", [], queue="default")
    exported: dict[str, set[str]] = {}
    for family in RedisCollector({"main": (connect(redis_url, name="kiq-metrics"), client.keys)}).collect():
        assert family.samples, f"{family.name} yielded no sample, so its labels are unknown"
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


@pytest.fixture
def exported(redis_server: RedisServer) -> dict[str, set[str]]:
    """Every sample name the master's /metrics can serve, with its labels."""
    names = worker_side()
    assert names, "no metric objects found in kiq.metrics"
    master = master_side(redis_server.url)
    assert not names.keys() & master.keys(), "a name is exported by both the workers and the master"
    return {**names, **master}


def test_dashboard_is_json_with_datasource_queue_and_class_variables():
    dashboard = load()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    found = variables(dashboard)
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    for name in FILTERS:
        var = found[name]
        assert var["type"] == "query"
        assert var["multi"] is True and var["includeAll"] is True
        assert var["datasource"] == {"type": "prometheus", "uid": DATASOURCE}
        assert variable_query(var).startswith("label_values(")


def test_every_panel_is_described_and_queries_the_datasource_variable():
    panels = [panel for panel in all_panels(load()) if panel["type"] != "row"]
    assert len(panels) >= 12
    ids = [panel["id"] for panel in all_panels(load())]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel.get("description", "").strip(), f"panel {panel['title']!r} has no description"
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
            assert metric_names(target["expr"]), f"{panel['title']!r} queries no kiq metric"
            for counter in re.findall(r"rate\(([^\[]*)\[([^\]]*)\]", target["expr"]):
                assert counter[1] == "$__rate_interval", f"{panel['title']!r}: {target['expr']}"


def test_expressions_are_found_in_collapsed_rows_and_variable_queries():
    dashboard = {
        "panels": [{"type": "row", "collapsed": True, "panels": [
            {"type": "timeseries", "targets": [{"expr": "kiq_a_total"}, {"expr": "kiq_b"}]}]}],
        "templating": {"list": [
            {"name": "old", "type": "query", "query": "label_values(kiq_c, queue)"},
            {"name": "new", "type": "query", "query": {"query": "label_values(kiq_d, class)"}},
            {"name": "ds", "type": "datasource", "query": "prometheus"},
        ]},
    }
    assert sorted(expressions(dashboard)) == sorted(
        ["kiq_a_total", "kiq_b", "label_values(kiq_c, queue)", "label_values(kiq_d, class)"])
    assert metric_names('sum(rate(kiq_x_bucket{le="1"}[5m])) / kiq_y') == {"kiq_x_bucket", "kiq_y"}


def test_every_metric_the_dashboard_queries_is_exported_by_kiq(exported):
    used = set().union(*map(metric_names, expressions(load())))
    assert used
    missing = sorted(used - exported.keys())
    assert not missing, f"the dashboard queries metrics kiq does not export: {missing}"


def test_labels_are_used_only_on_metrics_that_have_them(exported):
    multi = {name for name, var in variables(load()).items() if var.get("multi") or var.get("includeAll")}
    filtered: set[str] = set()
    for expr in expressions(load()):
        for metric, matchers in SELECTOR.findall(expr):
            for label, operator, value in MATCHER.findall(matchers):
                assert label in exported[metric] | TARGET_LABELS, f"{metric} has no label {label}: {expr}"
                refs = set(REFERENCE.findall(value))
                filtered |= refs
                if refs & multi:
                    assert operator in ("=~", "!~"), f"multi-value {sorted(refs)} needs =~: {expr}"
        for labels, body in groupings(expr):
            for metric in metric_names(body):
                unknown = labels - exported[metric] - TARGET_LABELS
                assert not unknown, f"{metric} has no label {unknown} to aggregate by: {expr}"
        if values := LABEL_VALUES.match(expr.strip()):
            for metric in metric_names(values.group(1)):
                assert values.group(2) in exported[metric], f"{metric} has no label {values.group(2)}"
    assert set(FILTERS) <= filtered, "the queue and class variables must filter the panels"


def test_every_variable_referenced_is_defined():
    dashboard = load()
    defined = set(variables(dashboard)) | GRAFANA_VARIABLES
    for expr in expressions(dashboard):
        assert set(REFERENCE.findall(expr)) <= defined, expr


def test_promtool_parses_every_expression(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (make test installs Debian's prometheus package)"
    rules = []
    for number, expr in enumerate(e for e in expressions(load()) if not e.startswith("label_values(")):
        concrete = expr.replace("$__rate_interval", "1m").replace("$queue", ".*").replace("$class", ".*")
        rules.append({"record": f"kiq:dashboard_{number}", "expr": concrete})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
