"""`ds01 exporter`: a collector thread refreshes a Snapshot; scrapes of /metrics and /health only read it."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest

from ds01 import eventlog, nvml
from ds01.config import AllocationSettings, load_config
from ds01.daemon import only_instance, stop_on_signals
from ds01.engine import Engine
from ds01.errors import Ds01Error, UsageError
from ds01.eventlog.types import EventType
from ds01.exporter.metrics import SnapshotCollector
from ds01.exporter.snapshot import Collector, ImageInspect, Snapshot, XidCounts
from ds01.gpus import quarantine
from ds01.paths import Paths
from ds01.records import ContainerSummary

STALE_AFTER_INTERVALS = 3


class NvmlGpus:
    """The GPU source, opened anew each cycle: a driver that is down fails that cycle only."""

    def inventory(self) -> nvml.Inventory:
        with nvml.session() as gpus:
            return gpus.inventory()


class EngineContainers:
    """The container source, connected anew each cycle: an engine that is down fails that cycle only."""

    def __init__(self, url: str | None) -> None:
        self.url = url

    def summaries(self) -> list[ContainerSummary]:
        with Engine(self.url) as engine:
            return engine.summaries()


class EngineImages:
    """The image inspects, on one connection opened for each cycle."""

    def __init__(self, url: str | None) -> None:
        self.url = url

    @contextmanager
    def inspector(self) -> Iterator[ImageInspect]:
        with Engine(self.url) as engine:
            yield engine.image


class XidLog:
    """Critical XIDs go to the health store (the allocator reads it); all XIDs are counted for the metrics."""

    def __init__(self, paths: Paths) -> None:
        self._paths = paths
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._counts: dict[str, Counter[int]] = {}

    def counts(self) -> dict[str, XidCounts]:
        with self._lock:
            return {uuid: XidCounts(self._last[uuid], dict(self._counts[uuid])) for uuid in self._last}

    def watch(self, stop: threading.Event) -> None:
        """Follow every available GPU until `stop` is set; a failure is logged and the watch begun again."""
        while not stop.is_set():
            try:
                settings = load_config(self._paths.config).allocation
                with nvml.session() as gpus:
                    uuids = [gpu.uuid for gpu in gpus.inventory().available]
                    watcher = gpus.xid_watcher(uuids)
                    try:
                        self.follow(watcher, settings, stop)
                    finally:
                        watcher.close()
            except (Ds01Error, OSError) as exc:  # OSError: the health store's lock timed out or its disk failed
                eventlog.emit(EventType.EXPORTER_XID_WATCH_FAILED, source="exporter", error=str(exc))
                stop.wait(10)

    def follow(self, watcher: nvml.XidWatcher, settings: AllocationSettings, stop: threading.Event) -> None:
        """Record and count the watcher's events until `stop` is set."""
        while not stop.is_set():
            event = watcher.wait(500)
            if event is None:
                continue
            quarantine.record_xid(self._paths.state_dir, event, settings, time.time())
            with self._lock:
                self._last[event.gpu_uuid] = event.xid
                self._counts.setdefault(event.gpu_uuid, Counter())[event.xid] += 1


class Exporter:
    def __init__(self, collector: Collector, interval_seconds: float) -> None:
        self.collector = collector
        self.interval = interval_seconds
        self._snapshot: Snapshot | None = None
        self._rendered = b""
        self._snapshot_registry = CollectorRegistry(auto_describe=False)
        self._snapshot_registry.register(SnapshotCollector(lambda: self._snapshot))
        self._process_registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process_registry)

    def refresh(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            self._snapshot = self.collector.collect()
            # Formatting thousands of labelled samples costs more than a scrape may: it is done once per cycle.
            self._rendered = generate_latest(self._snapshot_registry)
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def metrics(self) -> bytes:
        """The last cycle's metrics, and the exporter's own process metrics as of now."""
        return self._rendered + generate_latest(self._process_registry)

    def health(self) -> tuple[bool, dict[str, Any]]:
        snapshot = self._snapshot
        if snapshot is None:
            return False, {"status": "starting", "problems": ["no collection has finished yet"]}
        age = time.time() - snapshot.taken_at
        problems = list(snapshot.problems)
        if age > STALE_AFTER_INTERVALS * self.interval + snapshot.duration_seconds:
            problems.append(f"the last collection is {age:.0f}s old")
        ok = not problems
        return ok, {"status": "ok" if ok else "degraded", "sources": snapshot.source_up,
                    "last_collection_age_seconds": round(age, 3), "problems": problems}


def _handler(exporter: Exporter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, exporter.metrics())
            elif path == "/health":
                ok, report = exporter.health()
                self._send(200 if ok else 503, "application/json", json.dumps(report).encode() + b"\n")
            else:
                self._send(404, "text/plain", b"ds01 exporter: see /metrics and /health\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are not news: no access log."""

    return Handler


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {listen!r}: give ADDRESS:PORT, like 127.0.0.1:9401")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty address means all, as usual


def run(paths: Paths, listen: str, interval: float, engine_url: str | None, proc_root: Path) -> int:
    if interval <= 0:
        raise UsageError("--interval must be more than 0 seconds")
    address = parse_listen(listen)
    with only_instance(paths.run_dir, "exporter"):
        eventlog.configure(paths.log_dir, None)  # the rotation settings are read once, at the first event
        xids = XidLog(paths)
        collector = Collector(paths, NvmlGpus(), EngineContainers(engine_url), EngineImages(engine_url), proc_root,
                              xids=xids.counts)
        exporter = Exporter(collector, interval)
        try:
            server = ThreadingHTTPServer(address, _handler(exporter))
        except OSError as exc:
            raise Ds01Error(f"cannot listen on {listen}: {exc.strerror}. Is another exporter using the port?") \
                from exc
        server.daemon_threads = True
        stop = stop_on_signals()
        workers = [threading.Thread(target=exporter.refresh, args=(stop,), daemon=True),
                   threading.Thread(target=xids.watch, args=(stop,), daemon=True),
                   threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)]
        for worker in workers:
            worker.start()
        print(f"ds01 exporter: serving http://{listen}/metrics, collecting every {interval:g}s", flush=True)
        stop.wait()
        server.shutdown()
        server.server_close()
    return 0
