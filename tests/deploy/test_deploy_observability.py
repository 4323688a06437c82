"""Prometheus config, alert rules and the Grafana dashboard: valid for promtool, and every metric they
query is one the service really exports (names taken from ``mipic.service.metrics.Metrics().registry``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from mipic.service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mipic.json"
# Series Prometheus adds to every scrape target itself.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


@cache
def exported_names() -> frozenset[str]:
    """Every sample name the service's registry can expose, with prometheus_client's suffixes."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (strings, label matchers, ranges, grouping
    clauses and function calls stripped; Grafana ``$variables`` too)."""
    s = re.sub(r"\$\{\w+(?::\w+)?\}|\$\w+", " ", expr)
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', s)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = _GROUPING.sub(" ", s)
    names: set[str] = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        ident, is_call = m.group(1), m.group(2)
        if not is_call and ident.lower() not in _KEYWORDS:
            names.add(ident)
    return names


def test_metric_name_parser() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, dim, layer) (rate(mipic_request_duration_seconds_bucket'
            '{instance=~"$instance", status!~"2.."}[$__rate_interval]))) / clamp_min(sum(rate(foo_total[5m]'
            ' offset 1h)), 1e-9) > on (job) group_left (x) up')
    assert metric_names(expr) == {"mipic_request_duration_seconds_bucket", "foo_total", "up"}
    assert metric_names("mipic:request_duration_seconds:p99_5m > 0.5") == {"mipic:request_duration_seconds:p99_5m"}
    assert {"mipic_requests_total", "mipic_request_duration_seconds_bucket", "mipic_queue_depth",
            "mipic_model_info", "mipic_ready", "mipic_batch_tokens_sum"} <= exported_names()
    assert "mipic_requests" not in exported_names()


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (scripts/ci_system_deps.sh installs the prometheus package as root)")
    return exe


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


# --- Prometheus -----------------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    res = _run(_promtool(), "check", "config", str(PROM_DIR / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]


def test_promtool_check_rules() -> None:
    res = _run(_promtool(), "check", "rules", str(PROM_DIR / "alerts.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_rule_unit_tests() -> None:
    res = _run(_promtool(), "test", "rules", str(PROM_DIR / "tests" / "alerts_test.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def test_alerts_query_exported_metrics() -> None:
    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {"MipicDown", "MipicNotReady", "MipicHighP99Latency", "MipicHighOverloadRate"} <= alerts
    for rule in rules:
        unknown = metric_names(rule["expr"]) - exported_names() - recorded - SCRAPE_SERIES
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"
    overload = next(r for r in rules if r.get("alert") == "MipicHighOverloadRate")
    assert 'status="429"' in overload["expr"]


def test_prometheus_rule_crd_matches_alerts_file() -> None:
    (crd,) = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/prometheusrule.yaml").read_text()) if d]
    assert crd["kind"] == "PrometheusRule"
    assert crd["spec"]["groups"] == yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]


# --- Grafana -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for p in dashboard["panels"]:
        panels.append(p)
        panels.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return panels


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "mipic-overview" and dashboard["schemaVersion"] >= 36
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"] and all(t["refId"] for t in p["targets"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    provisioned = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert variables["datasource"]["current"]["value"] == provisioned["datasources"][0]["uid"]


def test_dashboard_covers_the_service(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(e for _, e in _exprs(dashboard))
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, dim, layer) (rate(mipic_request_duration_seconds_bucket" \
            in exprs
    assert "sum by (dim, layer) (rate(mipic_request_duration_seconds_count" in exprs
    used = set().union(*(metric_names(e) for _, e in _exprs(dashboard)))
    for name in ("mipic_queue_depth", "mipic_batch_size_bucket", "mipic_batch_tokens_bucket", "mipic_errors_total",
                 "mipic_model_info", "mipic_tokenization_duration_seconds_sum", "mipic_queue_duration_seconds_sum",
                 "mipic_inference_duration_seconds_sum", "mipic_requests_total", "mipic_ready"):
        assert name in used, f"dashboard does not show {name}"
    assert "sum by (code)" in exprs


def test_dashboard_queries_exported_metrics(dashboard: dict[str, Any]) -> None:
    for title, expr in _exprs(dashboard):
        unknown = metric_names(expr) - exported_names()
        assert not unknown, f"panel {title!r}: unknown metrics {unknown}"
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((\w+)(?:\{[^}]*\})?,\s*(\w+)\)", var["query"]["query"])
        assert m, var["query"]
        assert m.group(1) in exported_names()


def test_dashboard_promql_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses every panel query (Grafana variables replaced by concrete values)."""
    promtool = _promtool()
    rules = []
    for i, (_, expr) in enumerate(_exprs(dashboard)):
        concrete = expr.replace("$__rate_interval", "1m")
        for var in ("instance", "model_version", "endpoint", "dim", "layer"):
            concrete = concrete.replace(f"${var}", ".*")
        assert "$" not in concrete, concrete
        rules.append({"record": f"dashboard:panel_query:{i}", "expr": concrete})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = _run(promtool, "check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


FILTER_VARIABLES = ("endpoint", "dim", "layer", "model_version")


def _label_names() -> dict[str, set[str]]:
    """Sample name → its label names, from the service's own metric definitions."""
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    out: dict[str, set[str]] = {}
    for collector in vars(Metrics()).values():
        names = getattr(collector, "_labelnames", None)
        if names is not None:
            for suffix in suffixes:
                out[collector._name + suffix] = set(names)
    return out


def test_dashboard_filters_by_endpoint_dim_layer_and_model_version(dashboard: dict[str, Any]) -> None:
    """A variable per bounded label, and every query on a metric that carries the label filters by it."""
    labels = _label_names()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in FILTER_VARIABLES:
        var = variables[name]
        assert var["type"] == "query" and var["multi"] and var["includeAll"] and var["allValue"] == ".*"
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
        assert m and m.group(2) == name and name in labels[m.group(1)], var["query"]
    checked = 0
    for title, expr in _exprs(dashboard):
        for metric, body in re.findall(r"(mipic_\w+)\{([^{}]*)\}", expr):
            for name in FILTER_VARIABLES:
                if name in labels.get(metric, set()):
                    assert f'{name}=~"${name}"' in body, f"panel {title!r}: {metric} not filtered by ${name}"
                    checked += 1
    assert checked >= 20
