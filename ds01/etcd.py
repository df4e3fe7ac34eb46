"""The one door to etcd, through etcd3gw (etcd's v3 JSON gateway): consistent reads of a prefix, transactions that
compare revisions, and leases. Any endpoint of the cluster may answer; one that is down, or cut off from the
quorum, is passed over for the next. When none answers, the store is unavailable, and that is all callers learn:
they never act on an old read."""

from __future__ import annotations

import base64
import json
import math
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.lease import Lease

from ds01.config.schema import EtcdSettings
from ds01.errors import Ds01Error

_T = TypeVar("_T")


class StoreUnavailable(Ds01Error):
    """No endpoint of the etcd cluster answered with a quorum behind it."""


class StoreRefused(StoreUnavailable):
    """A member answered, and refused: nothing was changed (a full database: NOSPACE; a permission)."""


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Committed:
    succeeded: bool
    revision: int  # the cluster's after the transaction: every key it put has this mod_revision
    found: list[Entry] | None  # on a failure, the keys reread (commit's `reread`)


@dataclass(frozen=True)
class Compare:
    """key's mod_revision equals `mod_revision`; 0 means the key does not exist."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


def _encode(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _encode(bytes(raw))


class Etcd:
    def __init__(self, settings: EtcdSettings) -> None:
        if not settings.endpoints:
            raise Ds01Error("fleet.etcd.endpoints lists no endpoint")
        self._clients = [self._client(url, settings) for url in settings.endpoints]
        self._endpoints = settings.endpoints
        self._timeout = settings.timeout_seconds
        self._preferred = 0
        self._lock = threading.Lock()
        self._failed_at = -math.inf  # when no member answered last, on the monotonic clock

    @staticmethod
    def _client(url: str, settings: EtcdSettings) -> etcd3gw.Etcd3Client:
        parts = urlsplit(url)
        cert = (str(settings.cert_file), str(settings.key_file)) if settings.cert_file and settings.key_file \
            else (None, None)
        # The environment's proxies and CA bundles (REQUESTS_CA_BUNDLE) would override the configured ca_file.
        session = requests.Session()
        session.trust_env = False
        if settings.ca_file:
            session.verify = str(settings.ca_file)
        if cert[0] and cert[1]:
            session.cert = (cert[0], cert[1])
        return etcd3gw.Etcd3Client(
            host=parts.hostname or "127.0.0.1", port=parts.port or 2379, protocol=parts.scheme or "http",
            timeout=settings.timeout_seconds, api_path="/v3/", session=session)

    def _call(self, what: str, call: Callable[[etcd3gw.Etcd3Client], _T]) -> _T:
        """`call` on the first endpoint that answers, starting at the last one that did."""
        with self._lock:
            start = self._preferred
        problems = []
        for step in range(len(self._clients)):
            index = (start + step) % len(self._clients)
            client = self._clients[index]
            try:
                answer = call(client)
            except etcd_errors.ConnectionFailedError as exc:
                problems.append(f"{self._endpoints[index]} {_unreached(exc)}")
                continue
            except etcd_errors.ConnectionTimeoutError:
                problems.append(f"{self._endpoints[index]} did not answer within {self._timeout:g}s")
                continue
            except etcd_errors.InternalServerError as exc:  # a member without a quorum: "no leader", "timed out"
                problems.append(f"{self._endpoints[index]}: {_said(exc)}")
                continue
            except etcd_errors.Etcd3Exception as exc:  # a refusal (a full database: NOSPACE) is no grant either
                raise StoreRefused(f"etcd at {self._endpoints[index]} refused {what}: {_said(exc)}") from exc
            with self._lock:
                self._preferred = index
            return answer
        with self._lock:
            self._failed_at = time.monotonic()
        raise StoreUnavailable("no etcd member answered: " + "; ".join(problems))

    def failed_within(self, seconds: float) -> bool:
        """Whether no member answered a call in the last `seconds`: what can wait need not wait out every
        member's timeout again."""
        with self._lock:
            return time.monotonic() - self._failed_at < seconds

    def read_prefix(self, prefix: str) -> tuple[int, list[Entry]]:
        """Every key under `prefix`, read at one revision (linearizable: a quorum agreed on it): (revision,
        entries)."""
        answer = self._range({"key": _encode(prefix), "range_end": _prefix_end(prefix)})
        return int(answer["header"]["revision"]), _entries(answer)

    def revision(self, prefix: str) -> int:
        """The cluster's revision, and so whether anything changed, without reading the keys."""
        answer = self._range({"key": _encode(prefix), "range_end": _prefix_end(prefix), "count_only": True})
        return int(answer["header"]["revision"])

    def commit(self, compares: Sequence[Compare], changes: Sequence[Put | Delete], *,
               reread: str | None = None) -> Committed:
        """One transaction: every change if every compare holds, else none; then, with `reread`, the keys under
        that prefix as they are, in the same round trip."""
        failure = [{"request_range": {"key": _encode(reread), "range_end": _prefix_end(reread)}}] if reread else []
        answer = self._call("a transaction", lambda client: client.transaction({
            "compare": [{"key": _encode(c.key), "result": "EQUAL", "target": "MOD", "mod_revision": c.mod_revision}
                        for c in compares],
            "success": [_operation(change) for change in changes], "failure": failure}))
        succeeded = bool(answer.get("succeeded", False))
        found = None
        if not succeeded and reread:
            found = _entries((answer.get("responses") or [{}])[0].get("response_range") or {})
        return Committed(succeeded, int(answer["header"]["revision"]), found)

    def _range(self, payload: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("a read", lambda client: client.post(client.get_url("/kv/range"), json=payload)))

    def grant_lease(self, ttl_seconds: int) -> int:
        return int(self._call("a lease", lambda client: client.lease(ttl_seconds)).id)

    def alarms(self) -> list[str]:
        """The cluster's raised alarms (NOSPACE: it takes no writes), as `etcdctl alarm list` shows them."""
        answer = self._call("an alarm list", lambda client: client.post(
            client.get_url("/maintenance/alarm"), json={"action": "GET"}))
        return [f"{alarm.get('alarm', 'NONE')} on member {int(alarm.get('memberID', 0)):x}"
                for alarm in answer.get("alarms") or [] if alarm.get("alarm", "NONE") != "NONE"]

    def database_bytes(self) -> int:
        """The size of the database of the member that answers."""
        return int(self._call("a status", lambda client: client.status()).get("dbSize", 0))

    def keep_alive(self, lease: int) -> int:
        """Renew a lease: its TTL left; 0 or less when it lapsed already."""
        return int(self._call("a lease renewal", lambda client: Lease(lease, client).refresh()))


def _entries(answer: dict[str, Any]) -> list[Entry]:
    return [Entry(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")),
                  int(kv.get("mod_revision", 0)), int(kv.get("lease", 0))) for kv in answer.get("kvs", [])]


def _operation(change: Put | Delete) -> dict[str, Any]:
    if isinstance(change, Put):
        put: dict[str, Any] = {"key": _encode(change.key), "value": _encode(change.value)}
        if change.lease:
            put["lease"] = change.lease
        return {"request_put": put}
    delete: dict[str, Any] = {"key": _encode(change.key)}
    if change.prefix:
        delete["range_end"] = _prefix_end(change.key)
    return {"request_delete_range": delete}


def _unreached(exc: etcd_errors.ConnectionFailedError) -> str:
    """Why a connection failed: a TLS handshake (a wrong CA, a missing or refused client certificate) is said
    so, as the fix is in the certificates, not the network."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (requests.exceptions.SSLError, ssl.SSLError)):
            return f"failed the TLS handshake ({' '.join(str(cause).split())[:300]}): check fleet.etcd.ca_file, " \
                   "cert_file and key_file"
        cause = cause.__cause__ or cause.__context__
    return "refused or unreachable"


def _said(exc: etcd_errors.Etcd3Exception) -> str:
    """etcd's own words: the gateway's error message, else the failure as the client saw it."""
    detail = getattr(exc, "detail_text", None) or str(exc)
    try:
        parsed = json.loads(detail)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error") or parsed.get("message"), str):
        detail = parsed.get("error") or parsed["message"]
    return " ".join(str(detail).split())[:300]
