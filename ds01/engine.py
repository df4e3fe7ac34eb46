"""The only door to the Docker SDK: containers in, typed `ContainerInfo` out, engine errors as EngineError.

`Engine` talks to the engine directly (admin tools); `UserEngine` is the `container` command's client, which
talks to the ds01 proxy as the calling user, with every SDK error turned into a ds01 error by `translate`.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest

from ds01 import labels
from ds01.errors import Denied, Ds01Error, EngineError
from ds01.names import DRY_RUN_HEADER, ENGINE_NAME, USER_AGENT, WORKSPACE, plain_name
from ds01.paths import paths_from_env
from ds01.records import ContainerInfo, ContainerSummary, Details, container_info, details

_T = TypeVar("_T")


class Engine:
    def __init__(self, base_url: str | None = None) -> None:
        try:
            self._client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
            self.url = self._client.api.base_url
        except DockerException as exc:
            raise EngineError(f"cannot set up a Docker client: {exc}. Check DOCKER_HOST.") from exc

    def _failed(self, action: str, exc: DockerException) -> EngineError:
        return EngineError(f"the Docker engine ({self.url}) failed to {action}: {exc}. "
                           "Is dockerd running, and is DOCKER_HOST right?")

    def containers(self) -> list[ContainerInfo]:
        """Every container, running or not, inspected (device requests are not in the list call)."""
        try:
            listed = self._client.api.containers(all=True)
        except DockerException as exc:
            raise self._failed("list containers", exc) from exc
        found = []
        for summary in listed:
            try:
                found.append(container_info(self._client.api.inspect_container(summary["Id"])))
            except NotFound:
                continue  # removed between the list and the inspect
            except DockerException as exc:
                raise self._failed(f"inspect container {summary['Id'][:12]}", exc) from exc
        return found

    def summaries(self) -> list[ContainerSummary]:
        """Every container from one list call: enough to attribute processes, cheap enough for every cycle."""
        try:
            listed = self._client.api.containers(all=True)
        except DockerException as exc:
            raise self._failed("list containers", exc) from exc
        return [ContainerSummary(id=c["Id"], name=(c.get("Names") or ["/?"])[0].lstrip("/"),
                                 labels=c.get("Labels") or {}, status=c.get("State") or "unknown") for c in listed]

    def cpu_usage_ns(self, container_id: str) -> int:
        """Total CPU time the container has used, from one stats sample."""
        try:
            stats = self._client.api.stats(container_id, stream=False, one_shot=True)
        except DockerException as exc:
            raise self._failed(f"read the CPU use of {container_id[:12]}", exc) from exc
        return int(((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0)

    def stop(self, container_id: str, grace_seconds: int) -> None:
        try:
            self._client.api.stop(container_id, timeout=grace_seconds)
        except DockerException as exc:
            raise self._failed(f"stop {container_id[:12]}", exc) from exc

    def remove(self, container_id: str) -> None:
        try:
            self._client.api.remove_container(container_id)
        except DockerException as exc:
            raise self._failed(f"remove {container_id[:12]}", exc) from exc

    def container(self, name_or_id: str) -> ContainerInfo:
        try:
            return container_info(self._client.api.inspect_container(name_or_id))
        except NotFound:
            raise EngineError(f"no container named {name_or_id!r}. See 'docker ps -a'.") from None
        except DockerException as exc:
            raise self._failed(f"inspect container {name_or_id}", exc) from exc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# --- The `container` command's side: users reach the engine only through the ds01 proxy. -----------------------

def user_docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or f"unix://{paths_from_env().run_dir}/docker.sock"


def _os_error(exc: BaseException) -> OSError | None:
    """The innermost OSError that explains a failed connection (requests wraps urllib3 wraps socket errors)."""
    seen: list[BaseException] = [exc]
    found: OSError | None = None
    while seen and len(seen) < 32:
        current = seen.pop(0)
        if isinstance(current, OSError) and (current.errno is not None or isinstance(current, TimeoutError)):
            found = current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        seen.extend(item for item in linked if isinstance(item, BaseException))
    return found


def translate(exc: BaseException, url: str, name: str | None = None, image: str | None = None) -> Ds01Error:
    """The one place SDK errors become ds01 errors. `name` is the engine name the call was about."""
    if isinstance(exc, DockerException) and not isinstance(exc, APIError) and isinstance(
            exc.__cause__, (APIError, OSError)):
        exc = exc.__cause__  # the client's construction wraps its first call's error
    shown = ENGINE_NAME.sub(r"\1", name or "") or "?"
    if isinstance(exc, APIError):
        headers = exc.response.headers if exc.response is not None else {}
        reason = headers.get("X-DS01-Reason")
        message = ENGINE_NAME.sub(r"\1", str(exc.explanation or exc)).removeprefix("ds01: ").rstrip(".")
        status = exc.status_code
        if status == 404 and (reason == "image_missing" or isinstance(exc, ImageNotFound)):
            return Ds01Error(f"image {image or '?'} is not on this host, so nothing was created. Pull it first "
                             f"(docker pull {image or 'IMAGE'}) or choose another with --image.")
        if status == 404:
            return Ds01Error(f"container {shown} does not exist. Run `container list --all` to see your containers.")
        if reason and status in (403, 413):
            return Denied(reason, f"{message}.")
        if status == 409 and "already in use" in message:
            return Ds01Error(f"you already have a container named {shown}. Pick another name, or remove it first "
                             f"(container remove {shown}).")
        if status == 409:
            return Ds01Error(f"container {shown}: {message}. See `container list --all` for its state.")
        if reason == "busy":
            return Ds01Error(f"{message}. Try again in a moment.")
        return EngineError(f"the ds01 proxy answered {status}: {message}. Try again; if it persists, tell your admin.")
    socket = url.removeprefix("unix://")
    cause = _os_error(exc)
    if isinstance(cause, TimeoutError) or "timed out" in str(exc).lower():
        return EngineError(f"the ds01 proxy at {socket} did not answer in time. Try again; if it persists, ask your "
                           "admin to check `systemctl status ds01-proxy`.")
    if cause is not None:
        why = {errno.ENOENT: "no socket there", errno.ECONNREFUSED: "connection refused",
               errno.EACCES: "permission denied"}.get(cause.errno or -1, str(cause))
        return EngineError(f"the ds01 proxy is not running at {socket} ({why}). Ask your admin to start it, or "
                           "check `systemctl status ds01-proxy`.")
    if isinstance(exc, OSError):  # connected, then cut off without an answer
        return EngineError(f"the ds01 proxy at {socket} closed the connection without answering ({exc}); it may "
                           "have stopped. Try again; if it persists, ask your admin to check "
                           "`systemctl status ds01-proxy`.")
    return EngineError(f"talking to the ds01 proxy at {url} failed: {exc}. Try again with --debug for details.")


class UserEngine:
    """The calling user's containers, through the ds01 proxy on DOCKER_HOST (default: ds01's socket)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or user_docker_host()
        try:
            self._api = docker.APIClient(base_url=self.url, version="auto", user_agent=USER_AGENT)
        except (DockerException, OSError) as exc:
            raise translate(exc, self.url) from exc

    def _call(self, name: str | None, action: Callable[[], _T], image: str | None = None) -> _T:
        try:
            return action()
        except (DockerException, OSError) as exc:
            raise translate(exc, self.url, name, image) from exc

    def containers(self, uid: int, everything: bool) -> list[Details]:
        """uid's `container`-made containers (running only unless `everything`), inspected for their GPUs."""
        listed = self._call(None, lambda: self._api.containers(
            all=everything, filters={"label": [f"{labels.UID}={uid}"]}))
        found = []
        for summary in listed:
            if not any(plain_name(n, uid) for n in summary.get("Names") or []):
                continue
            try:
                found.append(details(self._api.inspect_container(summary["Id"])))
            except NotFound:
                continue  # removed between the list and the inspect
            except (DockerException, OSError) as exc:
                raise translate(exc, self.url) from exc
        return found

    def inspect(self, name: str) -> Details:
        return self._call(name, lambda: details(self._api.inspect_container(name)))

    def body(self, image: str, command: list[str], *, workspace: str, gpus: int, mig: str | None,
             cpus: float | None, memory: int | None, shm_size: int | None) -> dict[str, Any]:
        """A create body: GPUs by count (-1: all) or by MIG label, the workspace at /workspace, limits if given."""
        requests = [DeviceRequest(count=gpus, capabilities=[["gpu"]])] if gpus else None
        host = self._api.create_host_config(
            binds=[f"{workspace}:{WORKSPACE}"], device_requests=requests, mem_limit=memory, shm_size=shm_size,
            nano_cpus=None if cpus is None else round(cpus * 1e9))
        wanted = {labels.REQUEST_MIG: mig} if mig else {}
        return dict(self._api.create_container_config(image, command, host_config=host, working_dir=WORKSPACE,
                                                      labels=wanted))

    def create(self, name: str, body: dict[str, Any]) -> str:
        created = self._call(name, lambda: self._api.create_container_from_config(body, name), body.get("Image"))
        return str(created["Id"])

    def dry_run(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """What the proxy would grant for this create, without creating anything."""
        def post() -> dict[str, Any]:
            response = self._api._post_json(self._api._url("/containers/create"), data=body, params={"name": name},
                                            headers={DRY_RUN_HEADER: "true"})
            return dict(self._api._result(response, json=True))
        return self._call(name, post, body.get("Image"))

    def start(self, name: str) -> None:
        self._call(name, lambda: self._api.start(name))

    def stop(self, name: str, timeout: int) -> None:
        self._call(name, lambda: self._api.stop(name, timeout=timeout))

    def remove(self, name: str, force: bool) -> None:
        self._call(name, lambda: self._api.remove_container(name, force=force))

    def run(self, name: str, command: list[str], write: Callable[[int, bytes], None]) -> int:
        """Run a command in a running container, passing each (1 stdout | 2 stderr, bytes) to `write`; its exit code."""
        def go() -> int:
            exec_id = self._api.exec_create(name, command, stdout=True, stderr=True)["Id"]
            for out, err in self._api.exec_start(exec_id, stream=True, demux=True):
                if out:
                    write(1, out)
                if err:
                    write(2, err)
            for _ in range(50):  # the stream can end a moment before the engine records the exit code
                state = self._api.exec_inspect(exec_id)
                if not state.get("Running"):
                    return int(state.get("ExitCode") or 0)
                time.sleep(0.1)
            return int(state.get("ExitCode") or 0)
        return self._call(name, go)

    def logs(self, name: str, follow: bool, tail: int | None) -> Iterator[tuple[int, bytes]]:
        """(1 stdout | 2 stderr, bytes) frames of the container's log; with `follow`, until it stops."""
        try:
            tty = bool((self._api.inspect_container(name).get("Config") or {}).get("Tty"))
            params = {"stdout": 1, "stderr": 1, "follow": int(follow), "tail": "all" if tail is None else tail}
            response = self._api._get(self._api._url("/containers/{0}/logs", name), params=params, stream=True)
            self._api._raise_for_status(response)
            self._api._disable_socket_timeout(self._api._get_raw_response_socket(response))
            while True:
                if tty:
                    data = response.raw.read1(65536) if hasattr(response.raw, "read1") else response.raw.read(4096)
                    if not data:
                        return
                    yield 1, data
                    continue
                header = response.raw.read(8)
                if len(header) < 8:
                    return
                stream, length = struct.unpack(">BxxxL", header)
                data = response.raw.read(length) if length else b""
                yield (2 if stream == 2 else 1), data
        except (DockerException, OSError) as exc:
            raise translate(exc, self.url, name) from exc

    def stats(self, name: str) -> dict[str, Any]:
        """One snapshot (the engine samples twice, about a second apart, so CPU use can be computed)."""
        return self._call(name, lambda: dict(self._api.stats(name, stream=False)))

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> UserEngine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
