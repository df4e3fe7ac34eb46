"""Prometheus rules, example config and Grafana dashboard shipped under exporter/.

Checks them with promtool, keeps every metric name they use inside the exporter's contract, and
provides helpers for an end-to-end test (a real Prometheus scraping `ds01 exporter`):
`panel_queries`, `write_prometheus_config`, `start_prometheus`, `query`, `stop_prometheus`, `free_port`.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "exporter" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = REPO / "exporter" / "grafana" / "ds01-overview.json"

# The exporter's metric names: the contract the rules and the dashboard are written against.
CONTRACT_METRICS = frozenset({
    # hardware
    "ds01_gpu_info",
    "ds01_gpu_utilization_ratio",
    "ds01_gpu_memory_utilization_ratio",
    "ds01_gpu_memory_used_bytes",
    "ds01_gpu_memory_total_bytes",
    "ds01_gpu_temperature_celsius",
    "ds01_gpu_power_watts",
    "ds01_gpu_power_limit_watts",
    "ds01_gpu_healthy",
    "ds01_gpu_last_xid",
    "ds01_gpu_xid_errors_total",
    # attribution
    "ds01_gpu_processes",
    "ds01_gpu_process_memory_bytes",
    "ds01_untracked_gpu_processes",
    "ds01_untracked_gpu_memory_bytes",
    "ds01_unmanaged_container_gpu_processes",
    "ds01_container_gpu_memory_bytes",
    "ds01_user_gpu_memory_bytes",
    # allocations and limits
    "ds01_allocation_gpu_equivalents",
    "ds01_container_gpu_equivalents",
    "ds01_user_gpu_equivalents",
    "ds01_user_gpu_quota",
    "ds01_user_max_containers",
    "ds01_containers",
    # images
    "ds01_image_storage_bytes",
    # the queue
    "ds01_queue_requests",
    "ds01_queue_waiting_gpu_equivalents",
    "ds01_queue_oldest_wait_seconds",
    "ds01_queue_wait_seconds_bucket",
    "ds01_queue_wait_seconds_sum",
    "ds01_queue_wait_seconds_count",
    "ds01_fairshare_factor",
    "ds01_usage_decayed_gpu_equivalent_hours",
    # events
    "ds01_events_total",
    # the exporter itself
    "ds01_exporter_collection_duration_seconds",
    "ds01_exporter_collections_total",
    "ds01_exporter_errors_total",
    "ds01_exporter_source_up",
})
PROMETHEUS_METRICS = frozenset({"up"})

PROMQL_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "inf", "nan", "atan2",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_NAMES_IN_TEXT = re.compile(r"(?<![\w:.$-])(ds01[_:][\w:]*)")
# Grafana variables: $name, ${name}, ${name:format}, [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_INTERVAL_VARIABLES = frozenset({"__rate_interval", "__interval", "__range"})
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


# ---------------------------------------------------------------------------------------------- helpers


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and label names left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, subqueries, durations in them
    text = _LABEL_LIST.sub(" ", text)  # by (...), on (...), group_left (...)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word, is_call = match.group(1), match.group(2)
        if is_call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def _substitute(expr: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in _INTERVAL_VARIABLES:
            return "1m"
        if name == "datasource":
            return ""
        return ".+"

    return _VARIABLE.sub(replace, expr)


def panel_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every panel target's expr, runnable against Prometheus: user variables match anything (`.+`, used
    inside `=~` matchers), `$datasource` is dropped and `$__rate_interval`/`$__interval` become `1m`."""
    return [_substitute(target["expr"])
            for panel in all_panels(dashboard.get("panels", []))
            for target in panel.get("targets", [])
            if target.get("expr")]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_prometheus_config(config_dir: Path, port: int, ds01_target: str | None = None,
                            interval: str = "1s") -> Path:
    """A copy of the example config and rules.yml in config_dir, for a Prometheus on 127.0.0.1:port.

    Scrape and rule evaluation run every `interval`; job "prometheus" scrapes that Prometheus itself; job
    "ds01" scrapes `ds01_target` (host:port) or is left out when it is None."""
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(RULES, config_dir / "rules.yml")
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": interval, "evaluation_interval": interval}
    jobs = []
    for example_job in config["scrape_configs"]:
        job = {**example_job, "scrape_interval": interval}
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
        elif job["job_name"] == "ds01":
            if ds01_target is None:
                continue
            job["static_configs"] = [{"targets": [ds01_target]}]
        jobs.append(job)
    config["scrape_configs"] = jobs
    path = config_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _get(port: int, path: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed loopback http URL
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def start_prometheus(config_dir: Path, port: int, *, timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """Start Prometheus on 127.0.0.1:port with config_dir/prometheus.yml and its TSDB in config_dir/data;
    return once it is ready (its log is config_dir/prometheus.log). Stop it with stop_prometheus."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed")
    log_path = config_dir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config_dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={config_dir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=config_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            status, _ = _get(port, "/-/ready", timeout=2.0)
        except OSError:
            status = 0
        if status == 200:
            return process
        time.sleep(0.2)
    stop_prometheus(process)
    raise RuntimeError(f"prometheus not ready on port {port} after {timeout}s:\n{log_path.read_text()[-4000:]}")


def stop_prometheus(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def query(port: int, expr: str) -> list[Any]:
    """Instant query on the Prometheus at 127.0.0.1:port: the result list (vector or matrix; a scalar or
    string result comes back as a one-element list). Raises RuntimeError when Prometheus refuses it."""
    status, body = _get(port, "/api/v1/query", {"query": expr})
    try:
        answer = json.loads(body)
    except ValueError:
        raise RuntimeError(f"query {expr!r}: HTTP {status}: {body[:500]!r}") from None
    if status != 200 or answer.get("status") != "success":
        raise RuntimeError(f"query {expr!r}: HTTP {status}: {answer.get('errorType')}: {answer.get('error')}")
    data = answer["data"]
    if data["resultType"] in ("vector", "matrix"):
        return list(data["result"])
    return [data["result"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, check=False, timeout=120,
                          cwd=PROMETHEUS_DIR)


def _load_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _recorded_names() -> set[str]:
    return {rule["record"] for rule in _load_rules() if "record" in rule}


def _known_names() -> set[str]:
    return set(CONTRACT_METRICS) | set(PROMETHEUS_METRICS) | _recorded_names()


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")


# ---------------------------------------------------------------------------------------------- promtool


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@needs_promtool
def test_promtool_check_example_config(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / "rules.yml")
    result = _promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules.yml" in result.stdout + result.stderr  # the rule file was found and checked too

    example = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert example["rule_files"] == ["rules.yml"]
    (ds01_job,) = [job for job in example["scrape_configs"] if job["job_name"] == "ds01"]
    assert ds01_job["static_configs"] == [{"targets": ["localhost:9401"]}]
    assert ds01_job.get("scrape_interval", example["global"]["scrape_interval"]) == "15s"

    generated = write_prometheus_config(tmp_path / "generated", 9090, ds01_target="127.0.0.1:9401")
    result = _promtool("check", "config", str(generated))
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------- rules


def test_alerts_have_severity_and_annotations() -> None:
    alerts = [rule for rule in _load_rules() if "alert" in rule]
    assert len(alerts) >= 7
    for rule in alerts:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases: dict[str, list[bool]] = {}
    for group in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for rule in _load_rules():
        if "alert" in rule:
            outcomes = cases.get(rule["alert"], [])
            assert True in outcomes, f"{rule['alert']} never fires in rules_test.yml"
            assert False in outcomes, f"{rule['alert']} is never tested quiet in rules_test.yml"


def test_rules_use_only_contract_metrics() -> None:
    known = _known_names()
    for rule in _load_rules():
        name = rule.get("alert") or rule["record"]
        used = metric_names(rule["expr"])
        assert used, f"{name}: no metric found in {rule['expr']!r}"
        assert used <= known, f"{name} uses unknown metrics {sorted(used - known)}"
        for text in rule.get("annotations", {}).values():
            mentioned = set(_NAMES_IN_TEXT.findall(text))
            assert mentioned <= known, f"{name}'s annotations name unknown metrics {sorted(mentioned - known)}"
    for name in _recorded_names():
        assert re.fullmatch(r"ds01:\w+:\w+", name), f"recording rule {name} does not follow level:metric:ops"


def test_rule_unit_tests_feed_contract_metrics() -> None:
    known = set(CONTRACT_METRICS) | set(PROMETHEUS_METRICS)
    for group in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for series in group.get("input_series", []):
            name = series["series"].split("{", 1)[0].strip()
            assert name in known, f"rules_test.yml feeds {name}, which the exporter does not export"


def test_metric_name_extraction() -> None:
    expr = ('sum by (user, UUID) (rate(ds01_gpu_xid_errors_total{xid=~"48|79",gpu=~"$gpu"}[$__rate_interval]))'
            ' / on (UUID) group_left (gpu) ds01:gpu_allocated_equivalents:sum offset 5m > 0.5e3'
            ' or absent(up{job="ds01"}) unless count(ds01_gpu_healthy == 0) or vector(0)')
    assert metric_names(expr) == {"ds01_gpu_xid_errors_total", "ds01:gpu_allocated_equivalents:sum", "up",
                                  "ds01_gpu_healthy"}


# ---------------------------------------------------------------------------------------------- dashboard


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "ds01-overview"
    assert dashboard["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("user", "gpu"):
        assert variables[name]["type"] == "query"
        assert re.fullmatch(rf"label_values\((\w+),\s*{name}\)", variables[name]["query"]), variables[name]
        assert variables[name]["datasource"]["uid"] in {"$datasource", "${datasource}"}

    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert any(panel["type"] == "row" and panel.get("collapsed") and panel["panels"] for panel in panels)
    data_panels = [panel for panel in panels if panel["type"] != "row"]
    assert len(data_panels) >= 12
    for panel in data_panels:
        assert panel.get("targets"), f"panel {panel['title']!r} has no targets"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r} has a target without expr"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]

    exprs = "\n".join(target["expr"] for panel in data_panels for target in panel["targets"])
    for required in ("ds01_allocation_gpu_equivalents", "ds01_gpu_processes", "ds01_gpu_utilization_ratio",
                     "ds01_gpu_memory_used_bytes", "ds01_gpu_healthy", "ds01_gpu_xid_errors_total",
                     "ds01_user_gpu_quota", "ds01_containers", "ds01_untracked_gpu_processes",
                     "ds01_untracked_gpu_memory_bytes", "ds01_unmanaged_container_gpu_processes",
                     "ds01_exporter_collection_duration_seconds", "ds01_exporter_errors_total"):
        assert required in exprs, f"no panel shows {required}"
    assert 'user=~"$user"' in exprs
    assert 'gpu=~"$gpu"' in exprs


def test_dashboard_uses_only_contract_metrics() -> None:
    dashboard = _dashboard()
    known = _known_names()
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            used = metric_names(_substitute(target["expr"]))
            assert used, f"panel {panel['title']!r}: no metric in {target['expr']!r}"
            assert used <= known, f"panel {panel['title']!r} uses unknown metrics {sorted(used - known)}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            used = metric_names(variable["query"].replace("label_values(", "(").split(",")[0] + ")")
            assert used <= known, f"variable {variable['name']} uses unknown metrics {sorted(used - known)}"


def test_dashboard_variables_only_in_regex_matchers() -> None:
    for panel in all_panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            outside = _MATCHER.sub("", expr)
            for match in _VARIABLE.finditer(outside):
                name = match.group(1) or match.group(2) or match.group(3)
                assert name in _INTERVAL_VARIABLES, f"panel {panel['title']!r}: ${name} outside a matcher"
            for label, operator, value in _MATCHER.findall(expr):
                if _VARIABLE.search(value):
                    assert operator == "=~", f"panel {panel['title']!r}: {label}{operator}{value!r} needs =~"


def test_panel_queries_substitute_variables() -> None:
    dashboard = {"panels": [
        {"type": "row", "panels": [
            {"type": "timeseries", "targets": [
                {"expr": 'sum by (user) (rate(ds01_events_total{user=~"$user"}[$__rate_interval]))'},
                {"expr": 'ds01_gpu_healthy{gpu=~"${gpu}"}[$__interval]'}]}]},
        {"type": "stat", "targets": [{"expr": 'up{job="ds01"}'}, {"refId": "B"}]},
    ]}
    assert panel_queries(dashboard) == [
        'sum by (user) (rate(ds01_events_total{user=~".+"}[1m]))',
        'ds01_gpu_healthy{gpu=~".+"}[1m]',
        'up{job="ds01"}',
    ]
    queries = panel_queries(_dashboard())
    assert len(queries) >= 12
    assert not [q for q in queries if "$" in q or "[[" in q]


# ---------------------------------------------------------------------------------------------- a real Prometheus


@needs_prometheus
def test_start_prometheus_and_query(tmp_path: Path) -> None:
    port = free_port()
    config_dir = tmp_path / "prometheus"
    write_prometheus_config(config_dir, port)  # no ds01 job: DS01ExporterDown must go pending
    process = start_prometheus(config_dir, port)
    try:
        assert process.poll() is None
        deadline = time.monotonic() + 30
        samples: list[Any] = []
        while time.monotonic() < deadline:
            samples = query(port, 'up{job="prometheus"}')
            if samples and samples[0]["value"][1] == "1":
                break
            time.sleep(0.5)
        assert samples, "Prometheus never scraped itself"
        assert samples[0]["value"][1] == "1"
        assert samples[0]["metric"]["instance"] == f"127.0.0.1:{port}"

        status, body = _get(port, "/api/v1/rules")
        assert status == 200
        groups = {group["name"]: group for group in json.loads(body)["data"]["groups"]}
        assert {"ds01.recording", "ds01.alerts"} <= set(groups)
        loaded = [rule for group in groups.values() for rule in group["rules"]]
        assert len(loaded) == len(_load_rules())

        deadline = time.monotonic() + 30
        pending: list[Any] = []
        while time.monotonic() < deadline and not pending:
            pending = query(port, 'ALERTS{alertname="DS01ExporterDown"}')
            time.sleep(0.5)
        assert pending and pending[0]["metric"]["alertstate"] == "pending"

        assert query(port, "scalar(vector(2))")[0][1] == "2"
        with pytest.raises(RuntimeError, match="parse error"):
            query(port, "sum(")
    finally:
        stop_prometheus(process)
    assert process.returncode is not None
    assert (config_dir / "data").is_dir()
