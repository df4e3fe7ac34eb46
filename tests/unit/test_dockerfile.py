"""ds01.proxy.dockerfile: the images a classic build reads, as the engine's parser reads the Dockerfile.

The expectations were checked against a Docker Engine 20.10 classic builder; where later engines read a
construct differently, the Dockerfile is refused instead."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ds01.errors import UsageError
from ds01.proxy.dockerfile import ImageRead, ReadKind, image_reads, onbuild_reads
from ds01.proxy.dockerfilelines import CLASSIC, DockerfileError

FROM, COPY = ReadKind.FROM, ReadKind.COPY_FROM


def reads(dockerfile: str, args: dict[str, str | None] | None = None) -> list[tuple[str, str, int]]:
    return [(read.kind.value, read.reference, read.line) for read in image_reads(dockerfile, args or {})]


READS = [
    # FROM, stages and scratch
    ("FROM alpine\n", {}, [("FROM", "alpine", 1)]),
    ("FROM alice/tools:1.2@sha256:" + "a" * 64 + "\n", {}, [("FROM", "alice/tools:1.2@sha256:" + "a" * 64, 1)]),
    ("FROM scratch\nCOPY x /x\n", {}, []),
    ("from alpine AS base\nFrOm BASE\n", {}, [("FROM", "alpine", 1)]),
    ("FROM alpine aS build\nFROM build\n", {}, [("FROM", "alpine", 1)]),
    ("FROM a AS scratch\nFROM scratch\n", {}, [("FROM", "a", 1)]),
    ("FROM 0\n", {}, [("FROM", "0", 1)]),  # FROM names stages, it does not number them
    ("FROM a\nFROM b\n", {}, [("FROM", "a", 1), ("FROM", "b", 2)]),
    # COPY --from: stages by name or number, images otherwise; later stages are not known yet
    ("FROM a AS one\nFROM b\nCOPY --from=one /x /x\nCOPY --from=ONE /x /x\nCOPY --from=0 /x /x\n", {},
     [("FROM", "a", 1), ("FROM", "b", 2)]),
    ("FROM a\nFROM b\nCOPY --from=+0 /x /x\nCOPY --from=00 /x /x\n", {}, [("FROM", "a", 1), ("FROM", "b", 2)]),
    ("FROM a\nCOPY --from=alice/tools /x /x\n", {}, [("FROM", "a", 1), ("COPY --from", "alice/tools", 2)]),
    ("FROM a\nCOPY --from=later /x /x\nFROM b AS later\n", {},
     [("FROM", "a", 1), ("COPY --from", "later", 2), ("FROM", "b", 3)]),
    ("FROM a\nCOPY --chown=1:1 --from=\"bob/x\" /x /x\n", {}, [("FROM", "a", 1), ("COPY --from", "bob/x", 2)]),
    ("FROM a\nCOPY --from= x /x\n", {}, [("FROM", "a", 1)]),  # an empty --from copies from the context
    ("FROM a\nCOPY --from=99999999999999999999 /x /x\n", {},
     [("FROM", "a", 1), ("COPY --from", "99999999999999999999", 2)]),  # not an int64: a name
    ("FROM a\nADD --chown=1 x /x\nRUN echo --from=bob/x\n", {}, [("FROM", "a", 1)]),
    # ARG before FROM, build args and substitution
    ("ARG IMG=alice/x\nFROM $IMG\n", {}, [("FROM", "alice/x", 2)]),
    ("ARG IMG=alice/x\nFROM ${IMG}:1\n", {"IMG": "bob/y"}, [("FROM", "bob/y:1", 2)]),
    ("ARG IMG=alice/x\nFROM $IMG\n", {"IMG": None}, [("FROM", "alice/x", 2)]),
    ("FROM ${IMG:-alpine}\n", {"IMG": "bob/y"}, [("FROM", "alpine", 1)]),  # undeclared: not visible
    ("ARG IMG\nFROM ${IMG:-alpine}\n", {}, [("FROM", "alpine", 2)]),
    ("ARG IMG\nFROM ${IMG-alpine}\n", {}, [("FROM", "alpine", 2)]),
    ("ARG IMG\nFROM ${IMG:-alpine}\n", {"IMG": ""}, [("FROM", "alpine", 2)]),
    ("ARG IMG=x\nARG IMG\nFROM ${IMG:-alpine}\n", {}, [("FROM", "alpine", 3)]),  # declared again, unset
    ("ARG T=1\nFROM a${T:+-dev}\n", {}, [("FROM", "a-dev", 2)]),
    ("ARG T\nFROM a${T:+-dev}\n", {}, [("FROM", "a", 2)]),
    ("ARG T=\nFROM a${T+-dev}\n", {}, [("FROM", "a-dev", 2)]),
    ("ARG T=x\nFROM a${T:?needed}\n", {}, [("FROM", "ax", 2)]),
    ("ARG A=alice B=$A/x\nFROM x$B\n", {}, [("FROM", "x/x", 2)]),  # one ARG's words do not see each other
    ("ARG A=alice\nARG B=$A/x\nFROM $B\n", {"A": "bob"}, [("FROM", "bob/x", 3)]),
    ("ARG --unknown-flag IMG=b\nFROM $IMG\n", {}, [("FROM", "b", 2)]),  # ARG ignores flags
    ("ARG IMG=\"a/b\"\nFROM $IMG\n", {}, [("FROM", "a/b", 2)]),
    ("ARG IMG='a/b'\nFROM \"$IMG\"\n", {}, [("FROM", "a/b", 2)]),
    ("FROM ${HTTP_PROXY:-a}\n", {"HTTP_PROXY": "b"}, [("FROM", "b", 1)]),  # proxy args need no ARG
    ("ARG ALL_PROXY\nFROM ${ALL_PROXY:-a}\n", {"ALL_PROXY": "b"}, [("FROM", "b", 2)]),
    ("FROM a$$\n", {}, [("FROM", "a", 1)]),  # a special parameter, unset
    ("FROM a\\\\b\n", {}, [("FROM", "a\\b", 1)]),
    # the text around instructions
    ("\ufeffFROM a\r\nCOPY --from=b /x /x\r\n", {}, [("FROM", "a", 1), ("COPY --from", "b", 2)]),
    ("# a comment\n\n   FROM a\n", {}, [("FROM", "a", 3)]),
    ("FROM al\\\n  # a comment \\\n\n   \npine\n", {}, [("FROM", "alpine", 1)]),
    ("FROM a \\\n AS s\nFROM s\n", {}, [("FROM", "a", 1)]),
    ("# escape=`\nFROM al`\npine\nCOPY --from=b C:\\x \\y\n", {}, [("FROM", "alpine", 2), ("COPY --from", "b", 4)]),
    ("#escape=`\nFROM a\n", {}, [("FROM", "a", 2)]),
    ("# comment\n# escape=x\n# syntax=docker/dockerfile:1\nFROM a\n", {}, [("FROM", "a", 4)]),  # comments now
    ("FROM a\n# syntax=docker/dockerfile:1\n", {}, [("FROM", "a", 1)]),
    # the classic builder reads syntax= and check= and ignores them
    ("# syntax=docker/dockerfile:1\nFROM a\n", {}, [("FROM", "a", 2)]),
    ("# syntax=docker/dockerfile:1\n# check=skip=all\nFROM a\n", {}, [("FROM", "a", 3)]),
    ("# escape=`\n# syntax=docker/dockerfile:1\nFROM al`\npine\n", {}, [("FROM", "alpine", 3)]),
    ("FROM a\nRUN echo $((1<<2)) && cat<<x\n", {}, [("FROM", "a", 1)]),  # no word starting with <<
    # ONBUILD in the Dockerfile runs when a later FROM names the stage
    ("FROM a AS s\nONBUILD COPY --from=alice/t /x /x\nFROM s\n", {},
     [("FROM", "a", 1), ("COPY --from", "alice/t", 3)]),
    ("FROM a AS s\nONBUILD COPY --from=0 /x /x\nFROM b\nFROM s\n", {}, [("FROM", "a", 1), ("FROM", "b", 3)]),
    ("FROM a AS s\nONBUILD COPY --from=alice/t /x /x\nFROM b\nCOPY --from=s /x /x\n", {},
     [("FROM", "a", 1), ("FROM", "b", 3)]),  # COPY --from does not run triggers
]


@pytest.mark.parametrize(("dockerfile", "args", "expected"), READS)
def test_reads(dockerfile: str, args: dict[str, str | None], expected: list[tuple[str, str, int]]) -> None:
    assert reads(dockerfile, args) == expected


REFUSED = [
    ("", {}, "no instructions"),
    ("# only a comment\n\n", {}, "no instructions"),
    ("ARG X=1\n", {}, "has no FROM"),
    ("RUN true\nFROM a\n", {}, "RUN comes before the first FROM"),
    ("FROM a\nfoo bar\n", {}, "unknown instruction 'foo'"),
    ("FROM a\nFRÖM b\n", {}, "unknown instruction"),
    ("FROM\n", {}, "FROM takes an image"),
    ("FROM a b\n", {}, "FROM takes an image"),
    ("FROM a AS 1x\n", {}, "is not a stage name"),
    ("FROM a AS s\nFROM b AS S\n", {}, "already used"),
    ("ARG\nFROM a\n", {}, "ARG needs a name"),
    ("ARG =x\nFROM a\n", {}, "no name before the ="),
    # substitution the proxy cannot evaluate with certainty
    ("ARG X\nFROM $X\n", {}, "expands to nothing"),
    ("ARG X=\nFROM ${X-a}\n", {}, "expands to nothing"),
    ("FROM ${X#a}\n", {}, "${X#...} is not a substitution"),
    ("FROM ${X%a}\n", {}, "${X%...} is not a substitution"),
    ("FROM ${X/a/b}\n", {}, "${X/...} is not a substitution"),
    ("FROM ${X:=a}\n", {}, "${X:=...} is not a substitution"),
    ("FROM ${}\n", {}, "empty or malformed"),
    ("FROM ${X\n", {}, "is not a substitution"),
    ("FROM ${X:-a\n", {}, "not closed by }"),
    ("FROM 'a\n", {}, "' quote is not closed"),
    ("FROM \"a\n", {}, '" quote is not closed'),
    ("ARG X\nFROM ${X:?give-X}\n", {}, "X is unset or empty: give-X"),
    ("ARG X\nFROM ${X?}\n", {}, "X is unset: set it"),
    ("FROM a$\n", {}, "still holds a $"),
    ("FROM \\$X\n", {}, "still holds a $"),
    ("ARG X=$\nFROM a$X\n", {}, "still holds a $"),
    ("ARG X=\"a b\"\nFROM $X\n", {}, "is not an image reference"),
    ("FROM aé\n", {}, "is not an image reference"),
    ("FROM ${ALL_PROXY:-a}\n", {"ALL_PROXY": "b"}, "ALL_PROXY changes which images"),
    # COPY --from
    ("FROM a\nCOPY --from=$IMG /x /x\n", {"IMG": "b"}, "does not substitute variables in --from"),
    ("FROM a\nCOPY --from b /x /x\n", {}, "--from needs a value"),
    ("FROM a\nCOPY --from=b --from=c /x /x\n", {}, "given twice"),
    ("FROM a\nCOPY --from=0 /x /x\n", {}, "is the stage being built"),
    ("FROM a\nCOPY --from=2 /x /x\n", {}, "out of range: 0 stage(s)"),
    ("FROM a\nFROM b\nCOPY --from=-1 /x /x\n", {}, "out of range: 1 stage(s)"),
    ("FROM a\nADD --from=b /x /x\n", {}, "ADD has no --from"),
    ("FROM a\nCOPY --from=bé /x /x\n", {}, "non-ASCII"),
    ("# escape=`\nFROM a\nCOPY --from=b\\c /x /x\n", {}, "escape characters"),
    # BuildKit-only constructs
    ("FROM a\nRUN --mount=type=bind,from=alice/x,target=/x cat /x\n", {}, "RUN --mount needs BuildKit"),
    ("FROM a\nRUN --network=none true\n", {}, "RUN --network needs BuildKit"),
    ("FROM a\nRUN <<EOF\nFROM alice/x\nEOF\n", {}, "heredoc"),
    ("FROM a\nRUN cat << EOF\nFROM alice/x\nEOF\n", {}, "heredoc"),
    ("FROM a\nCOPY <<-x /y\n", {}, "heredoc"),
    ("FROM a\nONBUILD RUN 3<<EOF\n", {}, "heredoc"),
    ("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\n", {}, "put '# escape=' on the first line"),
    ("# check=skip=all\n# escape=`\nFROM a\n", {}, "put '# escape=' on the first line"),
    # directives and lines that engine versions read differently
    ("# escape=x\nFROM a\n", {}, "must be \\ or `"),
    ("# escape=`\n# ESCAPE=`\nFROM a\n", {}, "given twice"),
    ("#\v escape=`\nFROM a\n", {}, "unusual spaces"),
    ("FROM a\nRUN echo \\\r\r\nFROM b\n", {}, "more than one carriage return"),
    # ONBUILD
    ("FROM a\nONBUILD ONBUILD RUN x\n", {}, "ONBUILD takes one instruction"),
    ("FROM a\nONBUILD FROM b\n", {}, "ONBUILD takes one instruction"),
    ("FROM a\nONBUILD\n", {}, "ONBUILD takes one instruction"),
    ("FROM a AS s\nONBUILD COPY --from=1 /x /x\nFROM s\n", {}, "the stage being built"),
]


@pytest.mark.parametrize(("dockerfile", "args", "message"), REFUSED)
def test_refused(dockerfile: str, args: dict[str, str | None], message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        image_reads(dockerfile, args)
    assert message in str(caught.value)


def test_errors_name_the_line_and_are_usage_errors() -> None:
    with pytest.raises(DockerfileError, match=r"^Dockerfile line 3: RUN --mount needs BuildKit; " + re.escape(CLASSIC)):
        image_reads("FROM a\n\nRUN --mount=type=cache,target=/c true\n", {})
    assert issubclass(DockerfileError, UsageError)


def test_the_triggers_of_a_from_image_are_run_in_the_new_stage() -> None:
    triggers = {"alice/base": ["COPY --from=bob/tools /t /t", "RUN make", "COPY --from=0 /x /x"]}
    found = image_reads("FROM a\nFROM alice/base\n", {}, triggers)
    assert found == [ImageRead(FROM, "a", 1), ImageRead(FROM, "alice/base", 2),
                     ImageRead(COPY, "bob/tools", 2, "COPY --from=bob/tools /t /t")]


def test_an_onbuild_trigger_of_a_from_image_is_kept_for_stages_built_on_it() -> None:
    triggers = {"alice/base": ["ONBUILD COPY --from=carol/x /x /x"]}
    assert image_reads("FROM alice/base\n", {}, triggers) == [ImageRead(FROM, "alice/base", 1)]
    assert image_reads("FROM alice/base AS one\nFROM one\n", {}, triggers) == [
        ImageRead(FROM, "alice/base", 1), ImageRead(COPY, "carol/x", 2, "COPY --from=carol/x /x /x")]


@pytest.mark.parametrize(("triggers", "message"), [
    (["FROM x"], "one instruction other than FROM"),
    (["COPY --from=a /x /x\nCOPY --from=b /x /x"], "one instruction other than FROM"),
    (["RUN --mount=type=bind,from=x,target=/x true"], "needs BuildKit"),
    (["COPY --from=$X /x /x"], "does not substitute variables"),
    (["NOPE x"], "unknown instruction"),
])
def test_bad_triggers_are_refused_naming_the_trigger(triggers: list[str], message: str) -> None:
    with pytest.raises(DockerfileError, match=r"^Dockerfile line 1: the FROM runs the ONBUILD trigger "):
        image_reads("FROM base\n", {}, {"base": triggers})
    with pytest.raises(DockerfileError, match=re.escape(message)):
        onbuild_reads(triggers)


def test_onbuild_reads_resolves_the_stages_before_it() -> None:
    triggers = ["COPY --from=alice/tools /x /y", "COPY --from=Builder /a /b", "COPY --from=1 /a /b", "RUN make",
                "# escape=`\nCOPY --from=bob/x `\n /a /b"]
    assert onbuild_reads(triggers, ["builder", None], line=7) == [
        ImageRead(COPY, "alice/tools", 7, triggers[0]), ImageRead(COPY, "bob/x", 7, triggers[4])]
    with pytest.raises(DockerfileError, match="out of range"):
        onbuild_reads(["COPY --from=3 /a /b"], ["builder", None])


# --- properties ---------------------------------------------------------------------------------------------------

VALUES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["$", "${X}", "a$b", "alice/x", "", " ", "a b", "${", "'", '"', "\\", "é"])
TEMPLATES = ["FROM $IMG\n", "FROM ${IMG:-alpine}\n", "ARG BASE=$IMG\nFROM $BASE\n", "ARG X\nFROM a${X:+$IMG}\n",
             "FROM \"$IMG\"\n", "ARG IMG=alpine\nFROM ${IMG}:latest\n"]


@settings(max_examples=300, deadline=None)
@given(template=st.sampled_from(TEMPLATES), value=VALUES, extra=VALUES)
def test_build_args_never_leave_a_dollar_or_space_in_a_reference(template: str, value: str, extra: str) -> None:
    dockerfile = "ARG IMG\nARG X\n" + template
    try:
        found = image_reads(dockerfile, {"IMG": value, "X": extra})
    except DockerfileError:
        return
    for read in found:
        assert re.fullmatch(r"[\x21-\x7e]+", read.reference) and "$" not in read.reference


@settings(max_examples=100, deadline=None)
@given(value=st.from_regex(r"[a-z0-9]+(/[a-z0-9]+)?(:[a-z0-9]+)?", fullmatch=True))
def test_a_build_arg_is_the_reference(value: str) -> None:
    assert reads("ARG IMG\nFROM $IMG AS one\nFROM one\n", {"IMG": value}) == [("FROM", value, 2)]


FILLER = st.sampled_from(["", "   ", "\t", "# a comment", "   # an indented comment \\", "#"])


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(min_value=5, max_value=26), max_size=6), fillers=st.lists(FILLER, max_size=6),
       crlf=st.booleans())
def test_continuations_and_comments_read_as_the_joined_line(cuts: list[int], fillers: list[str], crlf: bool) -> None:
    joined = "FROM alice/tools:1.2 AS build"
    pieces, last = [], 0
    for cut in sorted(cuts):
        pieces.append(joined[last:cut])
        last = cut
    pieces.append(joined[last:])
    lines = [piece + "\\" for piece in pieces[:-1]] + [pieces[-1]]
    for index, filler in enumerate(fillers if len(lines) > 1 else []):  # dropped inside a continuation
        lines.insert(1 + index % (len(lines) - 1), filler)
    newline = "\r\n" if crlf else "\n"
    dockerfile = newline.join(lines) + newline + "FROM build\nCOPY --from=bob/x /x /x\n"
    expected = [("FROM", "alice/tools:1.2", 1), ("COPY --from", "bob/x", len(lines) + 2)]
    assert reads(dockerfile) == expected


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from(list("FROMCPYARGNBUILD fromcpy$-{}:='\"\\`#<\n\r\t\v/.0123a")), max_size=80),
       args=st.dictionaries(st.sampled_from(["A", "IMG", "ALL_PROXY"]), st.none() | st.text(max_size=5)))
def test_any_text_is_read_or_refused_with_a_dockerfile_error(text: str, args: dict[str, str | None]) -> None:
    try:
        found = image_reads(text, args)
    except DockerfileError:
        return
    assert all(isinstance(read, ImageRead) and "$" not in read.reference for read in found)
