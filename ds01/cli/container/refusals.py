"""What the `container` command tells its user when a call fails: `translate` is the one place where the
proxy's refusals and socket errors become ds01 errors that say what happened, why and what to do."""

from __future__ import annotations

import errno
import http.client
import json
import re
from typing import Literal

from ds01.errors import Denied, Ds01Error, EngineError
from ds01.names import ENGINE_NAME
from ds01.reasons import Reason

IMAGE_MISSING = ("no such image", "does not exist or no pull access", "repository does not exist")
_CONTAINER = re.compile(r"\bcontainer ([A-Za-z0-9][A-Za-z0-9_.-]*)")
ImageAction = Literal["build", "remove"]  # calls about one of the caller's own images


class Refusal(Exception):
    """An error answer of the proxy (or of the engine behind it); `translate` makes it a ds01 error."""

    def __init__(self, status: int, reason: str | None, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.reason = reason  # X-DS01-Reason: the proxy's stable code for a refusal
        self.message = message


Problem = Refusal | OSError | http.client.HTTPException


def translate(problem: Problem, url: str, name: str | None = None, image: str | None = None, *,
              image_action: ImageAction | None = None) -> Ds01Error:
    """The one place failures become ds01 errors. `name` is the engine name the call was about; `image_action`
    says the call was that action on the caller's own `image`."""
    shown = ENGINE_NAME.sub(r"\1", name or "") or "?"
    if isinstance(problem, Refusal):
        reason, status = problem.reason, problem.status
        message = ENGINE_NAME.sub(r"\1", problem.message).removeprefix("ds01: ").rstrip(".")
        about_image = _image_refusal(image_action, problem, message, image or "?") if image_action else None
        if about_image is not None:
            return about_image
        if status == 404 and (reason == Reason.IMAGE_MISSING or any(m in message.lower() for m in IMAGE_MISSING)):
            return Ds01Error(f"image {image or '?'} is not on this host, so nothing was created. Pull it first "
                             f"(docker pull {image or 'IMAGE'}) or choose another with --image.")
        if status == 404:
            return Ds01Error(f"container {shown} does not exist. Run `container list --all` to see your containers.")
        if reason and status in (403, 413):
            return Denied(_reason(reason), f"{message}.")
        if status == 409 and "already in use" in message:
            return Ds01Error(f"you already have a container named {shown}. Pick another name, or remove it first "
                             f"(container remove {shown}).")
        if status == 409:
            return Ds01Error(f"container {shown}: {message}. See `container list --all` for its state.")
        if reason == Reason.BUSY:
            return Ds01Error(f"{message}. Try again in a moment.")
        return EngineError(f"the ds01 proxy answered {status}: {message}. Try again; if it persists, tell your admin.")
    path = url.removeprefix("unix://")
    if isinstance(problem, TimeoutError):
        return EngineError(f"the ds01 proxy at {path} did not answer in time. Try again; if it persists, ask your "
                           "admin to check `systemctl status ds01-proxy`.")
    if isinstance(problem, OSError) and problem.errno not in (None, errno.ECONNRESET, errno.EPIPE):
        why = {errno.ENOENT: "no socket there", errno.ECONNREFUSED: "connection refused",
               errno.EACCES: "permission denied"}.get(problem.errno, problem.strerror or str(problem))
        return EngineError(f"the ds01 proxy is not running at {path} ({why}). Ask your admin to start it, or "
                           "check `systemctl status ds01-proxy`.")
    if isinstance(problem, OSError):  # connected, then cut off without an answer
        return EngineError(f"the ds01 proxy at {path} closed the connection without answering ({problem}); it may "
                           "have stopped. Try again; if it persists, ask your admin to check "
                           "`systemctl status ds01-proxy`.")
    what = str(problem) or type(problem).__name__
    return EngineError(f"talking to the ds01 proxy at {url} failed: {what}. Try again with --debug for details.")


def _image_refusal(action: ImageAction, refusal: Refusal, message: str, image: str) -> Ds01Error | None:
    """What refusals of a build or a removal mean; None for those every call shares (denials, a busy proxy)."""
    status, reason = refusal.status, refusal.reason
    if action == "build" and (status == 400 or (status == 500 and reason is None)):  # the engine's, before a step
        return Ds01Error(f"the build of {image} did not start: {message}. Fix the Dockerfile or the options, and "
                         "build again.")
    if action == "remove" and (status == 404 or reason == Reason.NOT_FOUND):
        return Ds01Error(f"you have no image {image}. `container image list` shows your images.")
    if action == "remove" and status == 409:
        return Ds01Error(_in_use(image, message, own=bool(ENGINE_NAME.search(refusal.message))))
    return None


def _in_use(image: str, message: str, own: bool) -> str:
    """Why the engine keeps an image (a container uses it, other names, child images), and what to do."""
    if (found := _CONTAINER.search(message)) is None:
        forced = "" if "cannot be forced" in message else f" Remove it anyway with `container image remove {image} -f`."
        return f"{image} cannot be removed: {message}.{forced}"
    name, (stop, rm) = found[1], ("container stop", "container remove") if own else ("docker stop", "docker rm")
    if "running container" in message:
        return (f"{image} is used by the running container {name}. Stop and remove that container first ({stop} "
                f"{name}, then {rm} {name}), and remove the image again.")
    return (f"{image} is used by the container {name}. Remove that container first ({rm} {name}), or remove the "
            f"image's name anyway with `container image remove {image} -f` (its layers stay until that container "
            "is removed).")


def _reason(code: str) -> Reason:
    try:
        return Reason(code)
    except ValueError:  # a code of a newer proxy: still a denial
        return Reason.ERROR


def refusal_of(response: http.client.HTTPResponse, data: bytes) -> Refusal:
    """The error answer's message: the engine's and the proxy's are JSON {"message": ...}, anything else text."""
    try:
        answer = json.loads(data)
        message = str(answer.get("message") or "") if isinstance(answer, dict) else ""
    except ValueError:
        message = data.decode(errors="replace").strip()
    return Refusal(response.status, response.getheader("X-DS01-Reason"),
                   message or f"{response.status} {response.reason}")
