"""The shipped Prometheus alert rules and Grafana dashboard: every expression parses as PromQL and every metric
it names is one the service's /metrics exposes (or, named here, another exporter's)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import fabguard.serve

SERVE = Path(fabguard.serve.__file__).parent
EXTERNAL = {"up": "Prometheus itself (scrape health)"}  # names no fabguard /metrics has, by design
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}


def exposed(metrics_text: str) -> set[str]:
    """Every series name the text can carry, from its families (a labelled family without children yet still
    declares its HELP / TYPE)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name + suffix for family in text_string_to_metric_families(metrics_text)
            for suffix in SUFFIXES.get(family.type, ("",))}


def names(expr: str) -> set[str]:
    """Metric names selected anywhere in the PromQL ``expr`` (a syntax error raises)."""
    import promql_parser

    found = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.add(node.name)
        for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (str, float, int)):
                visit(child)
        for child in getattr(node, "args", None) or []:
            visit(child)

    visit(promql_parser.parse(expr))
    return found


@pytest.fixture
def metric_names(client):
    return exposed(client.get("/metrics").text)


def rules() -> dict:
    groups = yaml.safe_load((SERVE / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_names_finds_every_selector():
    assert names('a{x="1"} / sum by (le) (rate(b_bucket[5m])) > 0.1 unless on (i) (-c == 1)') == {"a", "b_bucket", "c"}
    with pytest.raises(Exception):
        names("sum(rate(a[5m])")


def test_alert_rules_are_well_formed_and_name_live_metrics(metric_names):
    doc = yaml.safe_load((SERVE / "alerts.yml").read_text())
    assert set(doc) == {"groups"} and all(set(g) == {"name", "rules"} for g in doc["groups"])
    found = rules()
    for name, rule in found.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in ("page", "ticket") and rule["annotations"]["summary"], name
        unknown = names(rule["expr"]) - metric_names - set(EXTERNAL)
        assert not unknown, f"{name}: {unknown} not in /metrics"
    assert "fabguard_guardrail_rollbacks_total" in metric_names  # the counter the guardrail increments


def test_the_case_study_alerts_and_their_limits():
    from fabguard.serve.routers.status import LIMITS

    found = rules()
    expected = {"FabguardRejectRateHigh": ("fabguard_inspections_total", f"> {LIMITS['reject_rate']}"),
                "FabguardInspectLatencyP99High": ("histogram_quantile(0.99", f"> {LIMITS['latency_p99_ms'] / 1e3:.3f}"),
                "FabguardScoreDrift": ("fabguard_drift_score_pvalue", "< 0.01"),
                "FabguardLatentDrift": ("fabguard_drift_latent_pvalue", "< 0.01"),
                "FabguardGuardrailRollback": ("fabguard_guardrail_rollbacks_total", "> 0"),
                "FabguardModelNotReady": ("fabguard_model_serving == 1", "unless")}
    for alert, parts in expected.items():
        assert all(part in found[alert]["expr"] for part in parts), (alert, found[alert]["expr"])
    assert '[1h]' in found["FabguardRejectRateHigh"]["expr"]  # the case study's hourly rate


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus); the PromQL is parsed by the tests above")
    result = subprocess.run([promtool, "check", "rules", str(SERVE / "alerts.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboard_names_live_metrics(metric_names):
    dashboard = json.loads((SERVE / "grafana" / "fabguard.json").read_text())
    assert dashboard["uid"] and dashboard["templating"]["list"][0]["type"] == "datasource"
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["title"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}
        for target in panel["targets"]:
            found = names(target["expr"])
            dcgm = {n for n in found if n.startswith("DCGM_")}
            assert not dcgm or "dcgm-exporter" in panel["description"], panel["title"]  # the GPU panel says whose
            unknown = found - dcgm - metric_names - set(EXTERNAL)
            assert not unknown, f"panel {panel['title']!r}: {unknown} not in /metrics"
            used |= found
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for panel in ("score distribution", "per hour", "p50 / p95 / p99", "gpu", "queue depth", "drift"):
        assert panel in titles, panel  # the case study's dashboard panels
    assert {"fabguard_drift_score_pvalue", "fabguard_anomaly_score_bucket", "fabguard_queue_depth"} <= used
