"""test_alerts.py - the Prometheus alerts and the Grafana dashboard: promtool accepts the rules and their unit
tests, every dashboard query is valid PromQL, every alert has a firing and a quiet test case, and every
expression uses only the metric names that keel exports."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from harness import ROOT, Suite

try:
    import yaml
except ImportError:  # a pyenv or venv python: Debian's python3-yaml lives with /usr/bin/python3
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import yaml
    except ImportError:
        yaml = None

ALERTS = os.path.join(ROOT, "deploy", "prometheus", "alerts.yaml")
ALERT_TESTS = os.path.join(ROOT, "tests", "prom", "alerts_test.yaml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "keel.json")
RUNBOOK = "https://github.com/keel/keel/blob/main/docs/observability.md#"

# The metric names agreed with the C implementation; histograms also get _bucket/_count/_sum.
HISTOGRAMS = {"http_server_request_duration_seconds", "keel_worker_loop_lag_seconds",
              "keel_pipeline_delivery_latency_seconds"}
METRICS = {
    "keel_http_requests_total", "keel_http_protocol_errors_total", "keel_http_connections_active",
    "keel_http_connections_max", "keel_http_connections_accepted_total",
    "keel_http_connections_rejected_total", "keel_http_requests_in_flight", "keel_log_lines_dropped_total",
    "keel_trace_spans_exported_total", "keel_trace_spans_dropped_total", "keel_build_info", "keel_draining",
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
    "process_open_fds", "process_max_fds", "process_start_time_seconds", "up",
    # the telemetry pipeline (docs/pipeline.md, "Metrics"); keel serve runs it by default
    "keel_pipeline_records_received_total", "keel_pipeline_records_accepted_total",
    "keel_pipeline_records_rejected_total", "keel_pipeline_received_bytes_total",
    "keel_pipeline_requests_refused_total", "keel_pipeline_buffer_pending_bytes", "keel_pipeline_buffer_records",
    "keel_pipeline_buffer_oldest_age_seconds", "keel_pipeline_buffer_bytes", "keel_pipeline_buffer_segments",
    "keel_pipeline_buffer_max_bytes", "keel_pipeline_buffer_corrupt_records_total",
    "keel_pipeline_buffer_syncs_total", "keel_pipeline_delivered_total", "keel_pipeline_delivery_failures_total",
    "keel_pipeline_delivery_retries_total", "keel_pipeline_producer_rebuilds_total", "keel_pipeline_producer_queue",
    "keel_pipeline_in_flight_records", "keel_pipeline_in_flight_bytes", "keel_pipeline_memory_max_bytes",
} | {h + s for h in HISTOGRAMS for s in ("_bucket", "_count", "_sum")}

# Sample values for Grafana's built-in and the dashboard's own template variables.
SAMPLE_VALUES = {"__rate_interval": "1m", "__interval": "30s", "__interval_ms": "30000", "__range": "1h",
                 "__range_s": "3600", "job": "keel", "instance": "keel-0:9464", "route": "/users/{id}"}
VAR_REF = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "atan2"}


def promtool(*args, cwd=ROOT):
    if not shutil.which("promtool"):
        raise AssertionError("promtool not found: install Debian's prometheus package (scripts/deps.sh)")
    p = subprocess.run(["promtool"] + list(args), cwd=cwd, capture_output=True, text=True, timeout=120)
    return p.returncode, (p.stdout + p.stderr).strip()


def load_yaml(path):
    assert yaml is not None, "PyYAML is missing: install Debian's python3-yaml (scripts/deps.sh)"
    with open(path) as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise AssertionError("%s is not valid YAML: %s" % (path, e))


def alert_rules():
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


def dashboard():
    with open(DASHBOARD) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise AssertionError("%s is not valid JSON: %s" % (DASHBOARD, e))


def panels(dash):
    """Every panel except rows, including those inside collapsed rows."""
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def dashboard_exprs(dash):
    """(where, expr) for every panel target and every query variable's series selector."""
    for p in panels(dash):
        for t in p.get("targets", []):
            yield "panel %s %r target %s" % (p.get("id"), p.get("title"), t.get("refId")), t.get("expr", "")
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else q or ""
            m = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", q)
            if m:
                yield "variable $%s" % v["name"], m.group(1)


def substitute(expr, defined):
    """Replaces template variables by sample values; returns (expr, names that are not defined)."""
    unknown = []

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in SAMPLE_VALUES and (name in defined or name.startswith("__")):
            return SAMPLE_VALUES[name]
        if name in defined:
            return "x"
        unknown.append(name)
        return m.group(0)
    return VAR_REF.sub(repl, expr), unknown


def metric_names(expr):
    """Metric names referenced by a PromQL expression (strings, matchers, ranges and grouping removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", s):
        if not m.group(2) and m.group(1).lower() not in KEYWORDS:
            names.add(m.group(1))
    return names


def test_rules_pass_promtool_check():
    rc, out = promtool("check", "rules", ALERTS)
    assert rc == 0, "promtool check rules %s failed:\n%s" % (ALERTS, out)


def test_rules_unit_tests_pass():
    # rule_files in the test file are relative to its own directory; run from there as well.
    rc, out = promtool("test", "rules", os.path.basename(ALERT_TESTS), cwd=os.path.dirname(ALERT_TESTS))
    assert rc == 0, "promtool test rules %s failed:\n%s" % (ALERT_TESTS, out)


def test_alert_rules_follow_conventions():
    groups = load_yaml(ALERTS)["groups"]
    assert [g["name"] for g in groups] == ["keel"], "alerts.yaml must have exactly one group, keel; has %r" % (
        [g["name"] for g in groups])
    problems = []
    for r in alert_rules():
        name, ann = r["alert"], r.get("annotations", {})
        if "for" not in r:
            problems.append("%s has no for:" % name)
        if r.get("labels", {}).get("severity") not in ("page", "ticket"):
            problems.append("%s: severity is %r, not page or ticket" % (name, r.get("labels", {}).get("severity")))
        for key in ("summary", "description"):
            if not ann.get(key):
                problems.append("%s has no %s annotation" % (name, key))
        if not re.search(r"\$labels|\$value", ann.get("summary", "") + ann.get("description", "")):
            problems.append("%s: summary and description use neither $labels nor $value" % name)
        if ann.get("runbook_url") != RUNBOOK + name.lower():
            problems.append("%s: runbook_url is %r, want %r" % (name, ann.get("runbook_url"), RUNBOOK + name.lower()))
    assert not problems, "\n".join(problems)


def test_every_alert_has_firing_and_quiet_tests():
    cases = [c for t in load_yaml(ALERT_TESTS).get("tests", []) for c in t.get("alert_rule_test") or []]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = [r["alert"] for r in alert_rules()]
    problems = ["%s has no test case in %s that expects it to fire" % (n, ALERT_TESTS) for n in names if n not in fires]
    problems += ["%s has no test case in %s that expects it not to fire" % (n, ALERT_TESTS)
                 for n in names if n not in quiet]
    problems += ["%s tests alert %s, which alerts.yaml does not define" % (ALERT_TESTS, n)
                 for n in sorted((fires | quiet) - set(names))]
    assert not problems, "\n".join(problems)


def test_dashboard_panels_have_queries():
    dash = dashboard()
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    missing = {"DS_PROMETHEUS", "job", "instance", "route"} - variables
    assert not missing, "dashboard lacks template variables %s" % sorted(missing)
    assert list(panels(dash)), "dashboard has no panels"
    problems = []
    for p in panels(dash):
        where = "panel %s %r" % (p.get("id"), p.get("title"))
        if not p.get("targets"):
            problems.append("%s has no targets" % where)
        for t in p.get("targets", []):
            if not t.get("expr", "").strip():
                problems.append("%s target %s has no expr" % (where, t.get("refId")))
        for ds in [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]:
            if not isinstance(ds, dict) or ds.get("uid") != "${DS_PROMETHEUS}":
                problems.append("%s uses datasource %r, not ${DS_PROMETHEUS}" % (where, ds))
                break
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append("%s has no unit" % where)
    assert not problems, "\n".join(problems)


def test_dashboard_exprs_are_valid_promql():
    dash = dashboard()
    defined = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    rules, where_of, problems = [], {}, []
    for i, (where, expr) in enumerate(dashboard_exprs(dash)):
        if not expr.strip():
            continue  # reported by test_dashboard_panels_have_queries
        expr, unknown = substitute(expr, defined)
        for name in unknown:
            problems.append("%s uses $%s, which is neither a template variable nor a Grafana built-in" % (where, name))
        record = "dashboard:expr_%d" % i
        where_of[record] = where
        rules.append({"record": record, "expr": expr})
    assert rules, "dashboard has no exprs"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)  # JSON is YAML
    try:
        rc, out = promtool("check", "rules", f.name)
    finally:
        os.unlink(f.name)
    if rc != 0:
        for m in re.finditer(r'"(dashboard:expr_\d+)": (.*)', out):
            problems.append("%s: %s" % (where_of[m.group(1)], m.group(2)))
        if not problems:
            problems.append("promtool check rules on the dashboard's exprs failed:\n" + out)
    assert not problems, "\n".join(problems)


def test_exprs_use_only_exported_metrics():
    exprs = [("alert %s" % r["alert"], r["expr"]) for r in alert_rules()] + list(dashboard_exprs(dashboard()))
    problems = []
    for where, expr in exprs:
        for name in sorted(metric_names(expr) - METRICS):
            problems.append("%s uses metric %s, which keel does not export (or the expr does not parse)"
                            % (where, name))
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    Suite().run(globals())
