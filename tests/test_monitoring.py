"""The chart's alerting rules and Grafana dashboard, checked as plain files.

* ``promtool check rules`` accepts deploy/helm/hubcull/files/prometheus-rules.yaml, and
  ``promtool test rules`` runs tests/data/prometheus-rules-test.yaml: input series as the
  operator exports them, and when each alert fires or stays quiet (a crash-looping operator,
  a stopped loop, a deleted or suspended policy, a dry run, a peer's stale gauges...).
* The dashboard (files/grafana-dashboard.json) and the rules reference only series that
  ``hubcull.k8s.metrics.Metrics`` registers (counters with ``_total``, histograms with
  ``_bucket``/``_sum``/``_count``), with only the labels those series have; every dashboard
  query parses as PromQL (promtool); the panels cover what docs/monitoring.md describes.
* Each alert's runbook_url points at its section of docs/monitoring.md.

promtool comes from Debian's prometheus package (scripts/setup); without it these tests
skip, except under CI=true and scripts/test where they fail (tests/support/tools.py).
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from collections.abc import Iterator
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from hubcull.k8s.metrics import Metrics
from tests.support.helm import CHART, REPO, run_helm
from tests.support.tools import promtool

RULES = CHART / "files" / "prometheus-rules.yaml"
RULES_TEST = REPO / "tests" / "data" / "prometheus-rules-test.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
MONITORING_DOC = REPO / "docs" / "monitoring.md"
ALERTS = ("HubcullSweepsFailing", "HubcullNoRecentSweep", "HubcullThrottled")
#: Labels Prometheus adds to every scraped series (target labels), usable in queries.
TARGET_LABELS = {"job", "instance", "pod", "container", "service", "endpoint"}
#: Grafana variables and their values when a query is checked by promtool.
GRAFANA_VARIABLES = {
    "namespace": "jhub",
    "policy": ".*",
    "window": "1h",
    "__range": "1d",
    "__rate_interval": "2m",
    "__interval": "1m",
    "datasource": "prometheus",
}


# --------------------------------------------------------------------------------------------
# What the operator exports


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, for every metric ``Metrics`` registers, as exposed:
    counters as ``<name>_total``, histograms as ``_bucket`` (with ``le``), ``_sum``, ``_count``."""
    metrics = Metrics(CollectorRegistry())
    series: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        if not hasattr(collector, "_labelnames"):
            continue
        labels = set(collector._labelnames)
        for family in collector.describe():
            if family.type == "counter":
                series[f"{family.name}_total"] = labels
            elif family.type == "histogram":
                series[f"{family.name}_bucket"] = labels | {"le"}
                series[f"{family.name}_sum"] = labels
                series[f"{family.name}_count"] = labels
            else:
                series[family.name] = labels
    return series


def test_exported_series_are_the_contracts():
    """The names the checks below compare with are the contract's (Metrics section)."""
    series = exported_series()
    for name in (
        "hubcull_servers_culled_total",
        "hubcull_users_culled_total",
        "hubcull_sweeps_total",
        "hubcull_sweep_duration_seconds_bucket",
        "hubcull_servers_running",
        "hubcull_servers_idle",
        "hubcull_hub_requests_total",
    ):
        assert name in series, name
    assert series["hubcull_servers_culled_total"] == {"namespace", "policy", "reason"}
    assert series["hubcull_sweeps_total"] == {"namespace", "policy", "result"}
    assert series["hubcull_hub_requests_total"] == {"namespace", "policy", "code"}


# --------------------------------------------------------------------------------------------
# A small PromQL reader: the series and labels an expression uses

#: Words that look like series names but are PromQL keywords.
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
}
LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)


def series_names(expr: str) -> set[str]:
    """The series names an expression selects (not functions, keywords or labels)."""
    text = _strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = LABEL_LIST.sub(" ", text)  # by (...), on (...), ...
    text = re.sub(r"\$\{?\w+(?::\w+)?\}?", "1", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def selector_labels(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(series name, label names matched in its braces) for each ``name{...}``."""
    for match in SELECTOR.finditer(_strip_strings(expr)):
        labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", match.group(2)))
        yield match.group(1), labels


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without/on/ignoring/group_left/group_right lists."""
    found: set[str] = set()
    for match in LABEL_LIST.finditer(_strip_strings(expr)):
        found |= {label.strip() for label in match.group(2).split(",") if label.strip()}
    return found


def test_promql_reader_finds_series_and_labels():
    """The reader used below: series names, selector labels and grouping labels."""
    expr = (
        'histogram_quantile(0.95, sum by (namespace, le) (rate(a_bucket{policy=~"$policy",'
        ' x="{y}"}[$__rate_interval]))) / on (namespace) group_left b_total'
        ' unless c offset 5m > bool 1e3 and label_replace(d, "dst", "$1", "src", "(.*)")'
    )
    assert series_names(expr) == {"a_bucket", "b_total", "c", "d"}
    assert dict(selector_labels(expr)) == {"a_bucket": {"policy", "x"}}
    assert grouping_labels(expr) == {"namespace", "le"}
    assert series_names("sum(rate(x[5m])) by (le)") == {"x"}


# --------------------------------------------------------------------------------------------
# The rules


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rules_pass_promtool_check():
    """`promtool check rules` accepts the file: valid PromQL, templates and durations."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_rules_unit_tests_pass():
    """`promtool test rules`: every firing and not-firing case of the test file holds."""
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_unit_tests_can_fail(tmp_path):
    """A wrong expectation makes promtool fail (the test file is really evaluated)."""
    broken = RULES_TEST.read_text(encoding="utf-8").replace(
        "exp_labels: {severity: info, namespace: jhub, policy: default}",
        "exp_labels: {severity: info, namespace: jhub, policy: other}",
    )
    assert broken != RULES_TEST.read_text(encoding="utf-8")
    copy = tmp_path / "tests" / "data" / RULES_TEST.name
    copy.parent.mkdir(parents=True)
    copy.write_text(broken, encoding="utf-8")
    rules_copy = tmp_path / RULES.relative_to(REPO)
    rules_copy.parent.mkdir(parents=True)
    shutil.copy(RULES, rules_copy)
    result = promtool("test", "rules", str(copy))
    assert result.returncode != 0
    assert "HubcullThrottled" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet():
    """Each alert has a test where it fires and one where it must not."""
    tests = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    assert [r["alert"] for r in _rules()] == list(ALERTS)
    for alert in ALERTS:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in mine), f"{alert} never fires in the tests"
        assert any(not c["exp_alerts"] for c in mine), f"{alert} is never asserted quiet"


def test_rules_use_only_exported_series_and_labels():
    """Every series (and matcher/grouping label) in the rules is the operator's."""
    exported = exported_series()
    for rule in _rules():
        expr = rule["expr"]
        names = series_names(expr)
        assert names and names <= set(exported), f"{rule['alert']}: {names - set(exported)}"
        for name, labels in selector_labels(expr):
            assert labels <= exported[name] | TARGET_LABELS, f"{rule['alert']}: {name}{labels}"
        every_label = set().union(*exported.values())
        assert grouping_labels(expr) <= every_label | TARGET_LABELS, rule["alert"]


def test_rules_have_severity_and_a_runbook_section():
    """Each alert: a severity, a summary, and a runbook_url whose anchor is a heading of
    docs/monitoring.md (GitHub's anchor: the heading in lower case)."""
    doc = MONITORING_DOC.read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", doc, re.M)
    }
    for rule in _rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == "https://github.com/hubcull/hubcull/blob/main/docs/monitoring.md"
        assert anchor == rule["alert"].lower() and anchor in anchors, url


def test_alert_window_is_the_only_30m():
    """The chart replaces `[30m]` by prometheusRule.window: it must mean the window only."""
    text = RULES.read_text(encoding="utf-8")
    for rule in _rules():
        assert "[30m]" in rule["expr"]
    assert "30m" not in re.sub(r"\[30m\]", "", "".join(r["expr"] for r in _rules()))
    assert "[30m]" in text


# --------------------------------------------------------------------------------------------
# The dashboard


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels() -> list[dict[str, Any]]:
    return _dashboard()["panels"]


def _queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target."""
    return [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]


def _variable_queries() -> list[str]:
    """The label_values(...) queries of the dashboard's variables."""
    found = []
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def test_dashboard_uses_only_exported_series_and_labels():
    """Every series in every panel and variable query is one the operator exports, and
    every label a query matches or groups by exists on those series."""
    exported = exported_series()
    every_label = set().union(*exported.values())
    assert len(_queries()) >= 10
    for title, expr in _queries():
        names = series_names(expr)
        assert names, f"{title}: no series in {expr}"
        assert names <= set(exported), f"{title}: not exported: {names - set(exported)}"
        for name, labels in selector_labels(expr):
            assert labels <= exported[name] | TARGET_LABELS, f"{title}: {name}{labels}"
        assert grouping_labels(expr) <= every_label | TARGET_LABELS, title
    for query in _variable_queries():
        match = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?,\s*(\w+)\)", query)
        assert match, query
        assert match.group(1) in exported and match.group(3) in exported[match.group(1)]


def test_dashboard_queries_parse_as_promql(tmp_path):
    """Each query, with the Grafana variables filled in, passes `promtool check rules`."""
    rules = []
    for i, (_, expr) in enumerate(_queries()):
        filled = re.sub(
            r"\$\{?(\w+)\}?", lambda m: GRAFANA_VARIABLES[m.group(1)], expr
        )  # KeyError on an unknown variable
        rules.append({"record": f"dashboard:query{i}", "expr": filled})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_panels_cover_culls_servers_sweeps_durations_and_hub_codes():
    """The panels the runbook refers to exist, each grouped as described."""

    def panel_with(series: str, *labels: str) -> bool:
        return any(
            series in series_names(expr) and set(labels) <= grouping_labels(expr)
            for _, expr in _queries()
        )

    assert panel_with("hubcull_servers_culled_total", "policy", "reason")
    assert panel_with("hubcull_servers_running", "policy")
    assert panel_with("hubcull_servers_idle", "policy")
    assert any(
        "hubcull_sweeps_total" in expr and 'result="failure"' in expr for _, expr in _queries()
    ) and panel_with("hubcull_sweeps_total", "result")
    assert panel_with("hubcull_sweep_duration_seconds_bucket", "le")
    assert panel_with("hubcull_hub_requests_total", "code")


def test_dashboard_is_sidecar_ready():
    """A uid and title, a Prometheus data source variable that every panel and query uses,
    namespace and policy filters applied to every query, unique panel ids."""
    dashboard = _dashboard()
    assert dashboard["uid"] == "hubcull" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in _panels()]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        assert panel["datasource"] == source, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
    for title, expr in _queries():
        for name, labels in selector_labels(expr):
            assert {"namespace", "policy"} <= labels, f"{title}: {name} is not filtered"


def test_monitoring_doc_is_linked_from_readme():
    """README points at docs/monitoring.md."""
    assert "(docs/monitoring.md)" in (REPO / "README.md").read_text(encoding="utf-8")


def test_dashboard_json_is_pretty_printed():
    """The file is 2-space JSON (diffs stay readable)."""
    text = DASHBOARD.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2) + "\n"


def test_files_are_in_the_chart_package(tmp_path):
    """`helm package` keeps files/ in the chart archive (the templates read it, and an empty
    read would render no rules and an empty dashboard), byte for byte; the packaged chart
    renders the PrometheusRule and the dashboard from them."""
    result = run_helm(["package", str(CHART), "--destination", str(tmp_path)])
    assert result.returncode == 0, result.output
    [archive] = tmp_path.glob("hubcull-*.tgz")
    with tarfile.open(archive) as tar:
        packed = {
            member.name.split("/", 1)[1]: tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in tar.getmembers()
            if member.isfile()
        }
    for path in (RULES, DASHBOARD):
        name = str(path.relative_to(CHART))
        assert name in packed, f"{name} is not in {archive.name}: {sorted(packed)}"
        assert packed[name] == path.read_bytes(), name
    values = {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}
    args = ["template", "hubcull", str(archive), "--namespace", "jhub"]
    rendered = run_helm(args, values)
    assert rendered.returncode == 0, rendered.output
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    [rule] = [o for o in objects if o["kind"] == "PrometheusRule"]
    alerts = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(ALERTS) <= alerts
    [dashboard] = [o for o in objects if o["kind"] == "ConfigMap" and "dashboard" in str(o)]
    [text] = dashboard["data"].values()
    assert json.loads(text) == json.loads(DASHBOARD.read_text(encoding="utf-8"))
