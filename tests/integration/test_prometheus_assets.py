"""Prometheus rules, example configs (one host, and a fleet's central Prometheus) and Grafana dashboard shipped
under exporter/.

Checks them with promtool, keeps every metric name they use inside the exporter's contract, federates a node's
Prometheus into a central one as federation.yml does, and provides helpers for an end-to-end test (a real
Prometheus scraping `ds01 exporter`): `panel_queries`, `write_prometheus_config`, `start_prometheus`, `query`,
`stop_prometheus`, `free_port`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import MetricsHandler

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "exporter" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
FEDERATION = PROMETHEUS_DIR / "federation.yml"
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
    # the allocation store and the fleet (every node's exporter reports every node; the node is `instance`)
    "ds01_store_up",
    "ds01_store_transaction_retries_total",
    "ds01_fleet_node_up",
    "ds01_fleet_node_last_seen_timestamp_seconds",
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
# A name with its matchers, or a call; and matchers or a string, to keep strings outside matchers from counting.
_SELECTOR = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\{[^}]*\})?(\s*\()?")
_MATCHERS_OR_STRING = re.compile(r"\{[^}]*\}|" + _STRING.pattern)
_NODE_MATCHER = 'instance=~"$instance"'


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


def selectors(expr: str) -> list[tuple[str, str]]:
    """Each metric selector of a PromQL expression, in order: (name, its matchers as written, or "")."""
    text = _MATCHERS_OR_STRING.sub(lambda m: m.group(0) if m.group(0).startswith("{") else '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", _LABEL_LIST.sub(" ", text))  # ranges; by (...), on (...), group_left (...)
    found = []
    for match in _SELECTOR.finditer(text):
        name, matchers, call = match.groups()
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        found.append((name, matchers or ""))
    return found


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


def write_federation_config(config_dir: Path, port: int, nodes: dict[str, int], interval: str = "1s") -> Path:
    """federation.yml as config_dir/prometheus.yml (for start_prometheus), and rules.yml, for a central Prometheus
    on 127.0.0.1:port that federates the Prometheus of each node (node name -> its port on 127.0.0.1)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(RULES, config_dir / "rules.yml")
    config = yaml.safe_load(FEDERATION.read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": interval, "evaluation_interval": interval}
    for job in config["scrape_configs"]:
        job["scrape_interval"] = interval
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
        elif job["job_name"] == "ds01-federate":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{node_port}"], "labels": {"node": node}}
                                     for node, node_port in nodes.items()]
    path = config_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def serve_metrics(registry: CollectorRegistry) -> Iterator[int]:
    """Serve `registry` on 127.0.0.1 (as an exporter stands in for ds01's); yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetricsHandler.factory(registry))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _federation() -> dict[str, Any]:
    return dict(yaml.safe_load(FEDERATION.read_text()))


def _federate_job() -> dict[str, Any]:
    (job,) = [job for job in _federation()["scrape_configs"] if job["job_name"] == "ds01-federate"]
    return dict(job)


def _direct_scrape_job() -> dict[str, Any]:
    """The job federation.yml offers, commented out, in place of ds01-federate: each exporter scraped directly."""
    lines = FEDERATION.read_text().splitlines()
    start = lines.index("  # - job_name: ds01")
    block = []
    for line in lines[start:]:
        if not line.startswith("  # "):
            break
        block.append(line.removeprefix("  # "))
    (job,) = yaml.safe_load("\n".join(block))
    return dict(job)


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


@needs_promtool
def test_promtool_check_federation_config(tmp_path: Path) -> None:
    shutil.copy(FEDERATION, tmp_path / "federation.yml")
    shutil.copy(RULES, tmp_path / "rules.yml")
    result = _promtool("check", "config", str(tmp_path / "federation.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules.yml" in result.stdout + result.stderr

    direct = _federation()  # the commented-out alternative, in place of the federation job
    direct["scrape_configs"] = [_direct_scrape_job() if job["job_name"] == "ds01-federate" else job
                                for job in direct["scrape_configs"]]
    (tmp_path / "direct.yml").write_text(yaml.safe_dump(direct, sort_keys=False))
    result = _promtool("check", "config", str(tmp_path / "direct.yml"))
    assert result.returncode == 0, result.stdout + result.stderr

    generated = write_federation_config(tmp_path / "generated", 9090, {"gpu1": 9091, "gpu2": 9092})
    result = _promtool("check", "config", str(generated))
    assert result.returncode == 0, result.stdout + result.stderr


def test_federation_takes_the_exporters_series_with_each_node_as_instance() -> None:
    config = _federation()
    assert config["rule_files"] == ["rules.yml"]
    job = _federate_job()
    assert job["honor_labels"] is True  # job="ds01" as the nodes scraped it
    assert job["metrics_path"] == "/federate"
    (match,) = job["params"]["match[]"]
    matchers = {label: (operator, value) for label, operator, value in _MATCHER.findall(match)}
    assert matchers["job"] == ("=", "ds01")
    operator, names = matchers["__name__"]
    assert operator == "=~"
    for name in CONTRACT_METRICS | PROMETHEUS_METRICS:
        assert re.fullmatch(names, name), f"federation.yml leaves out {name}"
    for name in _recorded_names() | {"ALERTS", "ALERTS_FOR_STATE"}:  # evaluated again on the central server
        assert not re.fullmatch(names, name), f"federation.yml takes the nodes' {name}"

    nodes = [group["labels"]["node"] for group in job["static_configs"]]
    assert len(nodes) == len(set(nodes)) >= 2
    assert all(len(group["targets"]) == 1 for group in job["static_configs"])
    assert job["metric_relabel_configs"] == [{"source_labels": ["node"], "target_label": "instance"},
                                             {"regex": "node", "action": "labeldrop"}]

    direct = _direct_scrape_job()
    assert direct["job_name"] == "ds01"
    assert [group["labels"]["instance"] for group in direct["static_configs"]] == nodes
    assert all(group["targets"] == [f"{group['labels']['instance']}:9401"] for group in direct["static_configs"])


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


def test_fleet_rules_count_each_node_once() -> None:
    # Every node's exporter reports every fleet node: a rule on those series aggregates over the instances.
    fleet_metrics = {"ds01_fleet_node_up", "ds01_fleet_node_last_seen_timestamp_seconds"}
    fleet_rules = [rule for rule in _load_rules() if fleet_metrics & metric_names(rule["expr"])]
    assert [rule.get("alert") for rule in fleet_rules] == ["DS01FleetNodeDown"]
    for rule in fleet_rules:
        assert re.search(r"\b(?:max|min) by \(fleet_node\) \(ds01_fleet_node_\w+\)", rule["expr"]), rule["expr"]
    (store,) = [rule for rule in _load_rules() if "ds01_store_up" in metric_names(rule["expr"])]
    assert store["alert"] == "DS01StoreDown"


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


def test_selector_extraction() -> None:
    expr = ('sum by (user) (rate(ds01_events_total{instance=~"$instance",user=~"$user"}[$__rate_interval]))'
            ' / on (job, instance) group_left (gpu) ds01:gpu_allocated_equivalents:sum offset 5m > 0.5e3'
            ' or label_replace(up{job="ds01"}, "node", "$1", "instance", "(.*)") or vector(0)')
    assert selectors(expr) == [("ds01_events_total", '{instance=~"$instance",user=~"$user"}'),
                               ("ds01:gpu_allocated_equivalents:sum", ""), ("up", '{job="ds01"}')]


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
        assert re.fullmatch(rf'label_values\((\w+)\{{instance=~"\$instance"\}},\s*{name}\)',
                            variables[name]["query"]), variables[name]
    for name in ("instance", "user", "gpu"):
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
                     "ds01_exporter_collection_duration_seconds", "ds01_exporter_errors_total",
                     "ds01_store_up", "ds01_store_transaction_retries_total"):
        assert required in exprs, f"no panel shows {required}"
    assert 'user=~"$user"' in exprs
    assert 'gpu=~"$gpu"' in exprs


def test_dashboard_node_selector_applies_to_every_query() -> None:
    dashboard = _dashboard()
    names = [variable["name"] for variable in dashboard["templating"]["list"]]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    node = variables["instance"]
    # The node is Prometheus' instance: every exporter's, down ones too, on one server or federated.
    assert node["type"] == "query"
    assert node["query"] == 'label_values(up{job="ds01"}, instance)'
    assert node["multi"] and node["includeAll"] and node["allValue"] == ".+"
    assert names.index("instance") < names.index("user") and names.index("instance") < names.index("gpu")
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found = selectors(target["expr"])
            assert found, f"panel {panel['title']!r}: no selector in {target['expr']!r}"
            for name, matchers in found:
                assert _NODE_MATCHER in matchers, f"panel {panel['title']!r}: {name} is not limited to the chosen nodes"


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


def _wait_for(port: int, expr: str, timeout: float = 30.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while not (samples := query(port, expr)):
        assert time.monotonic() < deadline, f"{expr} has no data on the Prometheus at port {port}"
        time.sleep(0.5)
    return samples


def _federated_names(port: int, match: str) -> set[str]:
    status, body = _get(port, "/federate", {"match[]": match})
    assert status == 200, body[:500]
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in body.decode().splitlines()
            if line and not line.startswith("#")}


@needs_prometheus
def test_a_central_prometheus_federates_a_node(tmp_path: Path) -> None:
    registry = CollectorRegistry()  # what a node's exporter tells: its store, the fleet's leases, an allocation
    Gauge("ds01_store_up", "the store answers", registry=registry).set(1)
    leases = Gauge("ds01_fleet_node_up", "the node's lease is renewed", ["fleet_node"], registry=registry)
    leases.labels("gpu1").set(1)
    leases.labels("gpu9").set(0)
    seen = Gauge("ds01_fleet_node_last_seen_timestamp_seconds", "last renewal", ["fleet_node"], registry=registry)
    seen.labels("gpu1").set(time.time())
    seen.labels("gpu9").set(time.time() - 600)
    Gauge("ds01_allocation_gpu_equivalents", "allocated", ["UUID", "user", "container", "state"],
          registry=registry).labels("GPU-a", "alice", "alice-train", "bound").set(1)
    (match,) = _federate_job()["params"]["match[]"]
    node_port, central_port = free_port(), free_port()
    with serve_metrics(registry) as exporter_port:
        write_prometheus_config(tmp_path / "node", node_port, ds01_target=f"127.0.0.1:{exporter_port}")
        node = start_prometheus(tmp_path / "node", node_port)
        try:
            # The node records rules of its own, with job="ds01"; the federation leaves them there.
            _wait_for(node_port, "ds01:gpu_allocated_equivalents:sum")
            assert "ds01:gpu_allocated_equivalents:sum" in _federated_names(node_port, '{job="ds01"}')
            taken = _federated_names(node_port, match)
            assert {"ds01_store_up", "ds01_fleet_node_up", "ds01_allocation_gpu_equivalents", "up"} <= taken
            assert not [name for name in taken if name.startswith(("ds01:", "ALERTS"))]

            write_federation_config(tmp_path / "central", central_port, {"gpu1": node_port})
            central = start_prometheus(tmp_path / "central", central_port)
            try:
                stores = _wait_for(central_port, "ds01_store_up")
                assert [s["metric"] for s in stores] == [{"__name__": "ds01_store_up", "job": "ds01",
                                                          "instance": "gpu1"}]
                up = query(central_port, 'up{job="ds01"}')
                assert [(s["metric"]["instance"], s["value"][1]) for s in up] == [("gpu1", "1")]
                recorded = _wait_for(central_port, "ds01:gpu_allocated_equivalents:sum")
                assert [s["metric"]["instance"] for s in recorded] == ["gpu1"]
                # The dashboard's node selector, label_values(up{job="ds01"}, instance), as Grafana asks it.
                status, body = _get(central_port, "/api/v1/label/instance/values", {"match[]": 'up{job="ds01"}'})
                assert status == 200 and json.loads(body)["data"] == ["gpu1"]
                alerts = _wait_for(central_port, 'ALERTS{alertname="DS01FleetNodeDown"}')
                assert [(a["metric"]["fleet_node"], a["metric"]["alertstate"]) for a in alerts] == [
                    ("gpu9", "pending")]
            finally:
                stop_prometheus(central)
        finally:
            stop_prometheus(node)
