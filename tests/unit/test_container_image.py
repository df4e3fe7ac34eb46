"""`container image list|remove`, `container commit` and `container create --image NAME`, run in-process against
the stand-in for the proxy of standin.py: the requests they make, what they print, and the exit code of each
refusal; and the help of each. The fixtures and helpers here are shared with test_container_image_build.py, which
checks `container image build` and the build context."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ds01 import eventlog
from ds01.cli.container import main
from ds01.identity import nss
from ds01.identity.accounts import sanitize_username
from ds01.names import engine_name
from tests.unit.standin import Answer, Seen, StandIn, serving

REPO = Path(__file__).resolve().parents[2]
USER = sanitize_username(nss.login_name(os.getuid()) or "")
BASE = "ds01-test/busybox:latest"
BUILT = "sha256:" + "ab" * 32
IMAGES = [
    {"Id": BUILT, "RepoTags": [f"{USER}/torch-env:latest", f"{USER}/torch-env:v1"], "Size": 3 * 2**30,
     "Created": 1767323045},
    {"Id": "sha256:" + "cd" * 32, "RepoTags": ["ds01-test/busybox:latest"], "Size": 2 * 2**20, "Created": 1767000000},
    {"Id": "sha256:" + "ef" * 32, "RepoTags": ["<none>:<none>"], "Size": 10, "Created": 1767000000},
]
BUILD_LINES: list[dict[str, Any]] = [
    {"stream": f"Step 1/2 : FROM {BASE}\n"}, {"stream": " ---> cdcdcdcdcdcd\n"},
    {"aux": {"ID": BUILT}}, {"stream": "Successfully built abababababab\n"}]


def engine_answers(seen: Seen) -> Answer:
    """Just enough of the proxy and the engine for the image commands and `container create --dry-run`."""
    match seen.method, seen.path:
        case "POST", "/v1.40/build":
            return Answer(lines=BUILD_LINES)
        case "GET", "/v1.40/images/json":
            return Answer(body=IMAGES)
        case "DELETE", _:
            return Answer(body=[{"Untagged": seen.path.removeprefix("/v1.40/images/")}, {"Deleted": BUILT}])
        case "POST", "/v1.40/commit":
            return Answer(201, {"Id": BUILT})
        case "POST", "/v1.40/containers/create":
            return Answer(body={"image": seen.json()["Image"], "gpus": [], "gpu_equivalents": "0", "cpus": 2})
    return Answer(404, {"message": f"no route {seen.method} {seen.path}"})


@pytest.fixture
def proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    try:
        with serving(str(tmp_path / "docker.sock"), engine_answers) as server:
            config = tmp_path / "resource-limits.yaml"
            config.write_text(re.sub(r"default_image: .*", f"default_image: {BASE}",
                                     (REPO / "config" / "resource-limits.yaml").read_text(encoding="utf-8")),
                              encoding="utf-8")
            monkeypatch.setenv("DOCKER_HOST", f"unix://{server.server_address}")
            monkeypatch.setenv("DS01_CONFIG", str(config))
            monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "log"))
            monkeypatch.setenv("DS01_RUN_DIR", str(tmp_path))
            yield server
    finally:
        eventlog.configure(None, None)  # loading the config set this process's event log


def container(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused(status: int, reason: str | None, message: str) -> Answer:
    return Answer(status, {"message": message}, headers={"X-DS01-Reason": reason} if reason else {})


@pytest.fixture
def context_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ctx"
    (directory / "src").mkdir(parents=True)
    (directory / "src" / "train.py").write_text("print('hi')\n")
    return directory


# --- list, remove, commit ------------------------------------------------------------------------------------


def test_list_shows_your_images_and_with_all_the_shared_ones(proxy: StandIn,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = container(capsys, "image", "list")
    header, *lines = out.splitlines()
    assert code == 0 and header.split() == ["NAME", "TAG", "ID", "SIZE", "CREATED"]
    assert [line.split()[:4] for line in lines] == [["torch-env", "latest", "abababababab", "3.0GiB"],
                                                     ["torch-env", "v1", "abababababab", "3.0GiB"]]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d$", lines[0])
    code, out, _ = container(capsys, "image", "list", "--all")
    assert [line.split()[::len(line.split()) - 1] for line in out.splitlines()[1:]] == [
        ["torch-env", "yours"], ["torch-env", "yours"], ["ds01-test/busybox", "shared"]]
    code, out, _ = container(capsys, "image", "list", "--all", "--format", "json")
    listed = json.loads(out)
    assert listed[0] == {"name": "torch-env", "tag": "latest", "image": f"{USER}/torch-env:latest", "id": BUILT,
                         "size_bytes": 3 * 2**30, "created": "2026-01-02T03:04:05+00:00", "shared": False}
    assert [item["shared"] for item in listed] == [False, False, True]
    proxy.answer = lambda _seen: Answer(body=[])
    assert "you have no images; build one with" in container(capsys, "image", "list")[1]


@pytest.mark.parametrize(("given", "path"), [
    ("torch-env", f"{USER}/torch-env:latest"), ("torch-env:v1", f"{USER}/torch-env:v1"),
    (f"{USER}/torch-env", f"{USER}/torch-env:latest"),
])
def test_remove_deletes_your_image_by_its_whole_name(proxy: StandIn, capsys: pytest.CaptureFixture[str],
                                                     given: str, path: str) -> None:
    code, out, _ = container(capsys, "image", "remove", given)
    assert code == 0 and out == f"removed {path} (image abababababab)\n"
    deleted, = proxy.seen
    assert (deleted.method, deleted.path, deleted.query) == ("DELETE", f"/v1.40/images/{path}", {"force": "0"})
    container(capsys, "image", "remove", given, "-f")
    assert proxy.seen[-1].query == {"force": "1"}


def test_removing_an_image_a_container_uses_says_which_and_what_to_do(proxy: StandIn,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    holder = "0123456789ab"
    proxy.answer = lambda seen: (
        Answer(body={"Name": f"/{engine_name('train', os.getuid())}"}) if seen.path.startswith("/v1.40/containers/")
        else refused(409, None, f'conflict: unable to remove repository reference "{USER}/torch-env:latest" (must '
                                f"force) - container {holder} is using its referenced image abababababab"))
    code, _, err = container(capsys, "image", "remove", "torch-env")
    assert code == 1
    assert (f"{USER}/torch-env:latest is used by the container train. Remove that container first (container remove "
            "train), or remove the image's name anyway with `container image remove "
            f"{USER}/torch-env:latest -f`") in err
    assert [seen.path for seen in proxy.seen] == [f"/v1.40/images/{USER}/torch-env:latest",
                                                  f"/v1.40/containers/{holder}/json"]
    proxy.answer = lambda seen: refused(404, None, "no such container") if seen.method == "GET" else refused(
        409, None, f"conflict: unable to delete abababababab (cannot be forced) - image is being used by running "
                   f"container {holder}")
    code, _, err = container(capsys, "image", "remove", "torch-env")
    assert code == 1 and f"used by the running container {holder}. Stop and remove that container first " \
                         f"(docker stop {holder}, then docker rm {holder})" in err


@pytest.mark.parametrize(("answer", "code", "words"), [
    (refused(404, None, "No such image: x"), 1, f"you have no image {USER}/torch-env:latest. `container image list`"),
    (refused(403, "not_found", "No such image: x"), 1, "you have no image"),
    (refused(403, "image_shared", "x is a shared image: only an admin removes it"), 3, "only an admin removes it."),
])
def test_refusals_of_a_removal(proxy: StandIn, capsys: pytest.CaptureFixture[str], answer: Answer, code: int,
                               words: str) -> None:
    proxy.answer = lambda _seen: answer
    result, _, err = container(capsys, "image", "remove", "torch-env")
    assert result == code and words in err


def test_remove_takes_only_your_own_names(proxy: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = container(capsys, "image", "remove", "ds01-test/busybox")
    assert code == 2 and f"yours are {USER}/NAME" in err and proxy.seen == []


def test_commit_saves_your_container_as_your_image(proxy: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = container(capsys, "commit", "train", "train-env")
    assert code == 0
    made, = proxy.seen
    assert (made.method, made.path, made.query) == ("POST", "/v1.40/commit", {
        "container": engine_name("train", os.getuid()), "repo": f"{USER}/train-env", "tag": "latest"})
    assert out.splitlines() == [f"saving train as {USER}/train-env:latest... saved",
                                f"{USER}/train-env:latest is image abababababab; run it: container create NAME "
                                "--image train-env",
                                "(what train has in /workspace and other mounted directories is not in the image)"]
    proxy.answer = lambda _seen: refused(404, "not_found", "No such container: train._.1")
    code, out, err = container(capsys, "commit", "train", "train-env:v2")
    assert code == 1 and out.endswith("failed\n") and "container train does not exist" in err
    assert proxy.seen[-1].query["tag"] == "v2"
    proxy.answer = lambda _seen: refused(403, "image_storage", "your images take 100g (image_storage)")
    assert container(capsys, "commit", "train", "train-env")[0] == 3
    assert container(capsys, "commit", "train", "Bad")[0] == 2


# --- create --image ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "used", "listed"), [
    ("torch-env", f"{USER}/torch-env:latest", True),
    ("torch-env:v1", f"{USER}/torch-env:v1", True),
    ("torch-env:v9", "torch-env:v9", True),  # no such tag of yours: as given
    ("python:3.12", "python:3.12", True),
    ("ds01-test/busybox:latest", "ds01-test/busybox:latest", False),  # a path is never yours unless it says so
])
def test_create_prefers_your_own_image(proxy: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       given: str, used: str, listed: bool) -> None:
    code, out, err = container(capsys, "create", "train", "--cpu-only", "--dry-run", "--workspace", str(tmp_path),
                               "--image", given)
    assert code == 0, err
    created = proxy.seen[-1]
    assert created.path == "/v1.40/containers/create" and created.json()["Image"] == used
    assert f"image      {used}" in out
    assert ("/v1.40/images/json" in [seen.path for seen in proxy.seen]) is listed


def test_create_asks_which_tag_when_none_is_latest(proxy: StandIn, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    proxy.answer = lambda seen: Answer(body=[{"Id": BUILT, "RepoTags": [f"{USER}/t:v1", f"{USER}/t:v2"]}]) \
        if seen.path == "/v1.40/images/json" else engine_answers(seen)
    code, _, err = container(capsys, "create", "train", "--cpu-only", "--dry-run", "--workspace", str(tmp_path),
                             "--image", "t")
    assert code == 2 and "the tags v1, v2 and none is latest" in err and "--image t:v1" in err


# --- help ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["image", "--help"], ["image", "build", "--help"], ["image", "list", "--help"],
                                  ["image", "remove", "--help"], ["commit", "--help"]])
def test_every_help_ends_with_an_example(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out = capsys.readouterr().out
    assert exited.value.code == 0 and re.search(r"example:\n  container \S.*\n$", out)


def test_the_top_help_names_the_new_commands_without_importing_them() -> None:
    probe = ("import sys; from ds01.cli.container import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
             "    pass\nprint(sorted(m for m in sys.modules if m.startswith('ds01.cli.container.')), file=sys.stderr)")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert "    image  " in ran.stdout and "    commit  " in ran.stdout
    assert ran.stderr.strip() == "[]"
