"""`container image build|list|remove`, `container commit` and `container create --image NAME`, run in-process
against a stand-in for the proxy on a unix socket: the requests they make (query, tar context, Dockerfile), what
they print, and the exit code of each refusal. The build context's .dockerignore rules are checked on their own
against the docker CLI's meaning."""

from __future__ import annotations

import io
import json
import os
import re
import socketserver
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from ds01 import eventlog
from ds01.cli.container import buildcontext, main
from ds01.cli.container.image import dockerfile_text, show_build
from ds01.identity import nss
from ds01.identity.accounts import sanitize_username
from ds01.names import engine_name

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
BUILD_LINES = [{"stream": f"Step 1/2 : FROM {BASE}\n"}, {"stream": " ---> cdcdcdcdcdcd\n"},
               {"aux": {"ID": BUILT}}, {"stream": "Successfully built abababababab\n"}]


@dataclass
class Seen:
    method: str
    path: str  # without the query
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = field(default=b"", repr=False)

    def json(self) -> Any:
        return json.loads(self.body)

    def members(self) -> dict[str, tarfile.TarInfo]:
        with tarfile.open(fileobj=io.BytesIO(self.body), mode="r:") as archive:
            return {member.name: member for member in archive.getmembers()}

    def content(self, name: str) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(self.body), mode="r:") as archive:
            extracted = archive.extractfile(name)
            assert extracted is not None
            return extracted.read()


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # sent as JSON
    lines: list[dict[str, Any]] | None = None  # a chunked stream of JSON lines instead, as a build answers
    headers: dict[str, str] = field(default_factory=dict)


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


class StandIn(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.answer: Callable[[Seen], Answer] = engine_answers
        self.early: Answer | None = None  # answered before the request body is read, then the connection closed
        self.seen: list[Seen] = []
        super().__init__(path, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandIn

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _any(self) -> None:
        parts = urlsplit(self.path)
        seen = Seen(self.command, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)), dict(self.headers))
        self.server.seen.append(seen)
        early = self.server.early
        if early is None:
            seen.body = self._body()
        self.close_connection = early is not None
        answer = early or self.server.answer(seen)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.lines is not None:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in answer.lines:
                chunk = json.dumps(line).encode() + b"\r\n"
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        body = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if early is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _any

    def log_message(self, *_args: object) -> None:
        """Quiet: the tests assert on what was seen."""


@pytest.fixture
def proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    server = StandIn(str(tmp_path / "docker.sock"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    config = tmp_path / "resource-limits.yaml"
    config.write_text(re.sub(r"default_image: .*", f"default_image: {BASE}",
                             (REPO / "config" / "resource-limits.yaml").read_text(encoding="utf-8")), encoding="utf-8")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{server.server_address}")
    monkeypatch.setenv("DS01_CONFIG", str(config))
    monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("DS01_RUN_DIR", str(tmp_path))
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
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


# --- build ---------------------------------------------------------------------------------------------------


def test_build_writes_a_dockerfile_from_the_base_and_packages_and_keeps_it(
        proxy: StandIn, context_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = container(capsys, "image", "build", "torch-env", str(context_dir), "--pip", "numpy",
                               "torch>=2.1", "--apt", "git", "curl", "--build-arg", "V=1", "--no-cache")
    assert code == 0, err
    written = (context_dir / "Dockerfile").read_text()
    assert written == dockerfile_text(BASE, ["git", "curl"], ["numpy", "torch>=2.1"])
    assert f"FROM {BASE}\n" in written and "RUN pip install --no-cache-dir numpy 'torch>=2.1'\n" in written
    assert "apt-get install -y --no-install-recommends" in written and "git curl" in written
    assert "rm -rf /var/lib/apt/lists/*" in written
    assert f"wrote {context_dir / 'Dockerfile'} (FROM {BASE})" in err
    build, = proxy.seen
    assert (build.method, build.path) == ("POST", "/v1.40/build")
    assert build.query == {"t": f"{USER}/torch-env:latest", "dockerfile": "Dockerfile", "buildargs": '{"V": "1"}',
                           "nocache": "1", "pull": "0", "rm": "1", "forcerm": "1"}
    assert build.headers["Content-Type"] == "application/x-tar"
    assert int(build.headers["Content-Length"]) == len(build.body)
    members = build.members()
    assert sorted(members) == ["Dockerfile", "src", "src/train.py"]
    assert build.content("Dockerfile") == written.encode() and members["src"].isdir()
    assert (members["src/train.py"].uid, members["src/train.py"].uname) == (0, "")
    assert out.startswith(f"Step 1/2 : FROM {BASE}\n")
    assert out.endswith(f"built {USER}/torch-env:latest, image abababababab\n"
                        "run it: container create NAME --image torch-env\n")
    assert "sent the build context: " in err and "3 files" not in err and "2 files" in err

    proxy.seen.clear()  # the written Dockerfile is used as it is the next time
    code, _, err = container(capsys, "image", "build", "torch-env", str(context_dir))
    assert code == 0 and "wrote" not in err and proxy.seen[0].content("Dockerfile") == written.encode()


def test_an_existing_dockerfile_is_used_as_it_is(proxy: StandIn, context_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (context_dir / "Dockerfile").write_text("FROM mine\n")
    for options in (["--pip", "numpy"], ["--apt", "git"], ["--from", "other"]):
        code, _, err = container(capsys, "image", "build", "mine", str(context_dir), *options)
        assert code == 2 and "exists, and the build uses it as it is" in err and "remove it" in err
    assert proxy.seen == [] and (context_dir / "Dockerfile").read_text() == "FROM mine\n"


def test_the_current_directory_is_the_default_context_and_build_args_come_from_the_environment(
        proxy: StandIn, context_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(context_dir)
    monkeypatch.setenv("TOKEN", "s3")
    code, _, err = container(capsys, "image", "build", "tools:v2", "--from", "python:3.12", "--build-arg", "TOKEN",
                             "--pull")
    assert code == 0, err
    build, = proxy.seen
    assert (build.query["t"], build.query["buildargs"], build.query["pull"]) == (
        f"{USER}/tools:v2", '{"TOKEN": "s3"}', "1")
    assert (context_dir / "Dockerfile").read_text().endswith("FROM python:3.12\n")
    code, _, err = container(capsys, "image", "build", "tools", "--build-arg", "UNSET_ANYWHERE")
    assert code == 2 and "K=V" in err


def test_a_dockerfile_outside_the_context_is_sent_under_a_name_of_its_own(
        proxy: StandIn, context_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "gpu.Dockerfile"
    outside.write_text("FROM elsewhere\n")
    (context_dir / "sub").mkdir()
    (context_dir / "sub" / "Dockerfile.cpu").write_text("FROM inside\n")
    assert container(capsys, "image", "build", "a", str(context_dir), "-f", str(outside))[0] == 0
    assert container(capsys, "image", "build", "b", str(context_dir), "-f",
                     str(context_dir / "sub" / "Dockerfile.cpu"))[0] == 0
    first, second = proxy.seen
    name = first.query["dockerfile"]
    assert re.fullmatch(r"\.dockerfile\.[0-9a-f]{20}", name) and first.content(name) == b"FROM elsewhere\n"
    assert second.query["dockerfile"] == "sub/Dockerfile.cpu" and not (context_dir / "Dockerfile").exists()
    code, _, err = container(capsys, "image", "build", "c", str(context_dir), "-f", str(tmp_path / "missing"))
    assert code == 2 and "no such file" in err


def test_links_go_as_links_and_special_files_stay_out(proxy: StandIn, context_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (context_dir / "Dockerfile").write_text("FROM x\n")
    (context_dir / "passwd").symlink_to("/etc/passwd")
    (context_dir / "up").symlink_to("..")
    os.mkfifo(context_dir / "pipe")
    code, _, err = container(capsys, "image", "build", "links", str(context_dir))
    assert code == 0, err
    members = proxy.seen[0].members()
    assert members["passwd"].issym() and members["passwd"].linkname == "/etc/passwd"
    assert members["up"].issym() and "pipe" not in members
    assert "left out 1 sockets, FIFOs or devices" in err


def test_an_unreadable_file_is_named_before_anything_is_sent(
        proxy: StandIn, context_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (context_dir / "Dockerfile").write_text("FROM x\n")
    secret = str(context_dir / "src" / "train.py")
    monkeypatch.setattr(buildcontext.os, "access", lambda path, _mode: str(path) != secret)
    code, _, err = container(capsys, "image", "build", "x", str(context_dir))
    assert code == 2 and f"cannot read {secret}" in err and ".dockerignore" in err and proxy.seen == []


def test_a_terminal_sees_the_context_being_sent(proxy: StandIn, context_dir: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr("ds01.cli.container.image.PROGRESS_SECONDS", 0.0)
    code, _, err = container(capsys, "image", "build", "x", str(context_dir))
    assert code == 0
    assert "\r\x1b[Ksending the build context: " in err and " of " in err
    assert "\r\x1b[Ksent the build context: " in err


@pytest.mark.parametrize("name", ["Torch", ".x", "a..b", "x_", "a/b/c", "bob/x", "x:-bad", "é"])
def test_a_bad_image_name_is_a_usage_error_with_an_example(proxy: StandIn, context_dir: Path, name: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = container(capsys, "image", "build", name, str(context_dir))
    assert code == 2 and ("for example" in err or "not one of your images" in err)
    assert proxy.seen == [] and not (context_dir / "Dockerfile").exists()


def test_a_failed_step_is_exit_1_and_the_dockerfile_stays(proxy: StandIn, context_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    failing = [{"stream": "Step 2/2 : RUN pip install nosuch\n"},
               {"errorDetail": {"code": 1, "message": "The command '/bin/sh -c pip install nosuch' returned a "
                                                      "non-zero code: 1"},
                "error": "The command '/bin/sh -c pip install nosuch' returned a non-zero code: 1"}]
    proxy.answer = lambda seen: Answer(lines=failing) if seen.path == "/v1.40/build" else engine_answers(seen)
    code, out, err = container(capsys, "image", "build", "x", str(context_dir), "--pip", "nosuch")
    assert code == 1 and "Step 2/2" in out and "built" not in out
    assert (f"the build of {USER}/x:latest failed: The command '/bin/sh -c pip install nosuch' returned a non-zero "
            f"code: 1. Fix {context_dir / 'Dockerfile'} and build again.") in err
    assert (context_dir / "Dockerfile").is_file()


@pytest.mark.parametrize(("answer", "code", "words"), [
    (refused(403, "endpoint_disabled", "build is turned off on this host"), 3, "build is turned off on this host."),
    (refused(403, "image_storage", "your images take 100g and you may keep 100g (image_storage)"), 3, "100g"),
    (refused(413, "body_too_large", "the request body is larger than 4294967296 bytes"), 3, "larger than"),
    (refused(400, None, "dockerfile parse error line 2: unknown instruction: RUNN"), 1,
     "did not start: dockerfile parse error line 2: unknown instruction: RUNN"),
    (refused(500, "internal_error", "internal error in the ds01 proxy"), 1, "tell your admin"),
])
def test_refusals_of_a_build_keep_their_exit_code(proxy: StandIn, context_dir: Path, answer: Answer, code: int,
                                                  words: str, capsys: pytest.CaptureFixture[str]) -> None:
    proxy.answer = lambda _seen: answer
    result, _, err = container(capsys, "image", "build", "x", str(context_dir))
    assert result == code and words in err


def test_a_context_refused_before_it_is_read_whole_is_still_a_denial(
        proxy: StandIn, context_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (context_dir / "big.bin").write_bytes(os.urandom(1 << 20) * 16)  # far more than the socket buffers hold
    proxy.early = refused(413, "body_too_large", "the context is larger than 1m")
    code, _, err = container(capsys, "image", "build", "x", str(context_dir))
    assert code == 3 and "the context is larger than 1m." in err


def test_the_build_output_is_shown_as_the_docker_cli_shows_it() -> None:
    pulling = [{"status": "Pulling from library/python", "id": "3.12"},
               {"status": "Downloading", "id": "a1", "progress": "[=>   ] 1MB/9MB", "progressDetail": {}},
               {"status": "Downloading", "id": "b2", "progress": "[>    ] 0B/5MB", "progressDetail": {}},
               {"status": "Downloading", "id": "a1", "progress": "[===> ] 7MB/9MB", "progressDetail": {}},
               {"status": "Pull complete", "id": "a1", "progressDetail": {}},
               {"stream": "Step 2/2 : RUN true\n"}, {"aux": {"ID": BUILT}}]
    plain = io.StringIO()
    assert show_build(pulling, plain, terminal=False) == BUILT
    assert plain.getvalue() == ("3.12: Pulling from library/python\na1: Downloading\nb2: Downloading\n"
                                "a1: Pull complete\nStep 2/2 : RUN true\n")
    screen = io.StringIO()
    show_build(pulling, screen, terminal=True)
    assert screen.getvalue() == (
        "3.12: Pulling from library/python\n"
        "\n\x1b[1A\r\x1b[2Ka1: Downloading [=>   ] 1MB/9MB\r\x1b[1B"
        "\n\x1b[1A\r\x1b[2Kb2: Downloading [>    ] 0B/5MB\r\x1b[1B"
        "\x1b[2A\r\x1b[2Ka1: Downloading [===> ] 7MB/9MB\r\x1b[2B"
        "\x1b[2A\r\x1b[2Ka1: Pull complete \r\x1b[2B"
        "Step 2/2 : RUN true\n")


# --- .dockerignore -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("patterns", "path", "left_out"), [
    ("*.log", "a.log", True),
    ("*.log", "sub/a.log", False),  # * stops at /
    ("**/*.log", "sub/deep/a.log", True),
    ("**/*.log", "a.log", True),  # ** spans no directory too
    ("/build", "build/out.o", True),  # a leading / is the context's root; a directory covers what is in it
    ("build/", "build/out.o", True),
    ("build", "src/build", False),
    ("docs/**", "docs/a/b.md", True),
    ("docs/**", "docs", False),
    ("a?c", "abc", True),
    ("a?c", "a/c", False),
    ("[a-c]x", "bx", True),
    ("[a-c]x", "dx", False),
    ("\\*x", "*x", True),
    ("\\*x", "ax", False),
    ("*.log\n!keep.log", "keep.log", False),  # ! brings a path back, the last match decides
    ("*.log\n!keep.log\nkeep*", "keep.log", True),
    ("data\n!data/keep", "data/keep/file", False),
    ("# *.log\n\n  *.tmp  ", "a.log", False),  # a comment, a blank line, spaces around a pattern
    ("# *.log\n\n  *.tmp  ", "a.tmp", True),
    ("./sub/../x.txt", "x.txt", True),  # cleaned as a path
])
def test_dockerignore_patterns_mean_what_they_mean_to_the_docker_cli(patterns: str, path: str,
                                                                     left_out: bool) -> None:
    assert buildcontext.excluded(path, buildcontext.parse_ignore(patterns)) is left_out


def test_a_context_leaves_out_what_dockerignore_says_but_never_the_dockerfile(tmp_path: Path) -> None:
    for name in ("a.log", "keep.log", "sub/b.log", "src/__pycache__/x.pyc", "__pycache__/y.pyc", "build/out",
                 "src/build/kept", "data/big.bin", "docs/a.md", "docs/x/y.md", "docs/keep/k.md", "docs/readme.txt",
                 "secret1.txt", "secret12.txt", "node_modules/pkg/index.js", "node_modules/pkg/LICENSE",
                 "Dockerfile"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / ".dockerignore").write_text(
        "# what stays home\n*.log\n!keep.log\n**/__pycache__\n/build\ndata/\ndocs/**/*.md\n!docs/keep/*.md\n"
        "secret?.txt\nDockerfile\n.dockerignore\nnode_modules\n!node_modules/pkg/LICENSE\n")
    context = buildcontext.prepare(tmp_path, tmp_path / "Dockerfile")
    assert [member.name for member in context.members] == [
        ".dockerignore", "Dockerfile", "docs", "docs/keep", "docs/keep/k.md", "docs/readme.txt", "docs/x",
        "keep.log", "node_modules/pkg/LICENSE", "secret12.txt", "src", "src/build", "src/build/kept", "sub",
        "sub/b.log"]
    data = b"".join(buildcontext.stream(context))
    assert len(data) == context.size_bytes and context.files == 9
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        assert archive.getnames() == [member.name for member in context.members]
        extracted = archive.extractfile("node_modules/pkg/LICENSE")
        assert extracted is not None and extracted.read() == b"node_modules/pkg/LICENSE"


def test_a_bad_dockerignore_line_is_a_usage_error() -> None:
    with pytest.raises(buildcontext.UsageError, match="line 2"):
        buildcontext.parse_ignore("ok\n!\n")


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
