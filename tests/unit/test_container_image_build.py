"""`container image build`, run in-process against the stand-in for the proxy of standin.py: the request it makes
(query, tar context, Dockerfile), what it prints, and the exit code of each refusal; how the build's output is
shown; and the build context's .dockerignore rules, checked on their own against the docker CLI's meaning."""

from __future__ import annotations

import io
import os
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ds01.cli.container import buildcontext
from ds01.cli.container.image import dockerfile_text, show_build
from ds01.errors import UsageError
from tests.unit.standin import Answer, StandIn
from tests.unit.test_container_image import (
    BASE,
    BUILT,
    USER,
    container,
    context_dir,
    engine_answers,
    proxy,
    refused,
)

__all__ = ["context_dir", "proxy"]  # the fixtures, shared with test_container_image.py


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


def test_a_new_directory_is_made_for_a_generated_dockerfile_but_not_for_a_given_one(
        proxy: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = tmp_path / "tools"
    code, _, err = container(capsys, "image", "build", "tools", str(fresh))
    assert code == 0, err
    assert f"made {fresh} for the build context" in err and f"FROM {BASE}\n" in (fresh / "Dockerfile").read_text()
    assert proxy.seen[0].content("Dockerfile") == (fresh / "Dockerfile").read_bytes()
    code, _, err = container(capsys, "image", "build", "tools", str(tmp_path / "other"), "-f",
                             str(fresh / "Dockerfile"))
    assert code == 2 and "is not a directory" in err and not (tmp_path / "other").exists()


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
    monkeypatch.setattr("ds01.cli.container.buildcontext.os.access", lambda path, _mode: str(path) != secret)
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
    failing: list[dict[str, Any]] = [
        {"stream": "Step 2/2 : RUN pip install nosuch\n"},
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
    pulling: list[dict[str, Any]] = [
        {"status": "Pulling from library/python", "id": "3.12"},
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
    with pytest.raises(UsageError, match="line 2"):
        buildcontext.parse_ignore("ok\n!\n")
