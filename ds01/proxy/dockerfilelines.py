"""A Dockerfile's text as the engine's parser splits it into instructions (moby's vendored buildkit
frontend/dockerfile parser, engines 20.10 to 28): directives, continuations, comments, an instruction's flags and
ARG's words. What engine versions split differently is refused, as dockerfile.py explains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ds01.errors import UsageError

CLASSIC = "ds01 builds use the classic builder (BuildKit is off), which does not support it"
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
            "\u2028\u2029\u202f\u205f\u3000"  # Go's unicode.IsSpace, which Python's isspace() is not
_ASCII_SPACE = "\t\n\v\f\r "
FIELDS = re.compile(r"[\t\v\f\r ]+")  # how the parser splits an instruction, and FROM's arguments
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*")
_CONTINUATION = {e: re.compile(rf"([^{re.escape(e)}]){re.escape(e)}[ \t]*\Z|^{re.escape(e)}[ \t]*\Z") for e in "\\`"}
_HEREDOC = re.compile(r"(?<!\S)\d*<<-?[ \t\r]*[^<\s]")  # any word the parser may take for a heredoc
_INSTRUCTIONS = frozenset({"add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck", "label",
                           "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir"})


class DockerfileError(UsageError):
    """The Dockerfile is malformed, or reads images in a way ds01 cannot check with certainty."""

    def __init__(self, what: str, line: int | None = None) -> None:
        super().__init__(what if line is None else f"Dockerfile line {line}: {what}")
        self.what, self.line = what, line


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str  # lower case
    flags: list[str]
    args: str
    original: str  # the joined line, which ONBUILD records


def parse(text: str) -> tuple[list[Instruction], str]:
    """The instructions, each with the line it starts on, and the escape character."""
    lines = text.removesuffix("\n").split("\n") if text else []  # a final newline ends a line, starts none
    lines[:1] = [first.removeprefix("\ufeff") for first in lines[:1]]
    escape, directives, seen = "\\", True, set[str]()
    instructions, index = list[Instruction](), 0
    while index < len(lines):
        start, index = index + 1, index + 1
        line = _line(lines[start - 1], start).lstrip(_GO_SPACE)
        if directives:
            directives, escape = _directive(start, line, escape, seen)
        joined, more = _continued(line, escape) if not line.startswith("#") else ("", False)
        if not joined and not more:
            continue
        while more and index < len(lines):
            index += 1
            part = _line(lines[index - 1], index)
            if part.lstrip(_GO_SPACE).startswith("#") or not part.lstrip(_GO_SPACE):
                continue  # comments and blank lines inside a continuation are dropped
            part, more = _continued(part, escape)
            joined += part
        instructions.append(_instruction(start, joined, escape))
    if not instructions:
        raise DockerfileError("there are no instructions", len(lines))
    return instructions, escape


def _line(raw: str, number: int) -> str:
    if raw.endswith("\r\r"):  # engines before 24.0 strip one CR, later ones all: continuations would differ
        raise DockerfileError("the line ends with more than one carriage return; end lines with \\n or \\r\\n", number)
    return raw.removesuffix("\r")


def _directive(number: int, line: str, escape: str, seen: set[str]) -> tuple[bool, str]:
    """Parser directives: only at the very top, before any instruction, comment or blank line."""
    rest = line[1:].lstrip(_GO_SPACE)
    match = _DIRECTIVE.fullmatch(rest) if line.startswith("#") else None
    if not match or match[1].lower() not in ("escape", "syntax", "check"):
        return False, escape
    key, value = match[1].lower(), match[2]
    if key in seen:
        raise DockerfileError(f"the {key} directive is given twice; give it once", number)
    seen.add(key)
    if key != "escape":
        return True, escape  # the classic builder reads syntax= and check= and does nothing with them
    if seen & {"syntax", "check"}:  # engines before 27 end the directives at check=, and a late one at odd spaces
        raise DockerfileError("the escape directive comes after another directive, where engine versions differ on "
                              "whether it counts; put '# escape=' on the first line", number)
    if line[1:len(line) - len(rest)].strip("\t\n\f\r "):  # engines before 24.0 take only ASCII spaces here
        raise DockerfileError("the escape directive has unusual spaces after '#'; write '# escape=' + char", number)
    if value not in ("\\", "`"):
        raise DockerfileError(f"the escape character must be \\ or `, not {value!r}", number)
    return True, value


def _continued(line: str, escape: str) -> tuple[str, bool]:
    pattern = _CONTINUATION[escape]
    return (pattern.sub(r"\1", line), True) if pattern.search(line) else (line, False)


def _instruction(number: int, joined: str, escape: str) -> Instruction:
    name, rest = [*FIELDS.split(joined.strip(_GO_SPACE), maxsplit=1), ""][:2]
    lowered = name.lower() if name.isascii() else ""
    if lowered not in _INSTRUCTIONS:
        raise DockerfileError(f"unknown instruction {name!r}", number)
    if lowered in ("run", "copy", "add", "onbuild") and _HEREDOC.search(joined):
        raise DockerfileError(f"{name.upper()} has a heredoc (<<WORD), which needs BuildKit; {CLASSIC}. "
                              "Put the text in a file in the build context and COPY it.", number)
    flags, args = _flags(number, rest, escape)
    return Instruction(number, lowered, flags, args.strip(_GO_SPACE), joined)


def _flags(number: int, rest: str, escape: str) -> tuple[list[str], str]:
    """The leading --flag words as the parser splits them: it reads bytes, and escapes with \\ before 28.0."""
    words: list[str] = []
    index, end = 0, len(rest)
    while True:
        while index < end and rest[index] in _ASCII_SPACE:
            index += 1
        if not rest.startswith("--", index):
            break
        chars, quote, quoted = list[str](), "", False
        while index < end and (quote or rest[index] not in _ASCII_SPACE):
            char, index = rest[index], index + 1
            if char == quote or (not quote and char in "'\""):
                quote, quoted = ("" if quote else char), True
                continue
            if char == "\\" and index < end:
                char, index = rest[index], index + 1
            elif char == "\\":
                continue
            chars.append(char)
        if (word := "".join(chars)) == "--" and index < end:
            break
        if word != "--" and (quoted or word):
            words.append(word)
    scanned = rest[:index]
    if not scanned.isascii() or (escape == "`" and ("\\" in scanned or "`" in scanned)):
        raise DockerfileError("the flags hold non-ASCII or escape characters, which engine versions split "
                              "differently; write flags as plain --name=value", number)
    return words, rest[index:]


def split_words(rest: str, escape: str) -> list[str]:
    """ARG's words: split at spaces outside quotes, quotes and escapes kept for substitution to remove."""
    words, chars, index, end, phase, quote, keep = list[str](), list[str](), 0, len(rest), "space", "", False
    while index < end:
        char, index = rest[index], index + 1
        if phase != "quote" and char in _GO_SPACE:  # in "space", chars is empty: nothing is added
            if keep or chars:
                words.append("".join(chars))
            chars, keep, phase = [], False, "space"
            continue
        phase = "word" if phase == "space" else phase
        if phase == "word" and char in "'\"":
            quote, keep, phase = char, True, "quote"
        elif phase == "quote" and char == quote:
            phase = "word"
        if char == escape and (phase == "word" or quote != "'"):
            if index == end:
                phase = "word"
                continue
            chars.append(char)
            char, index = rest[index], index + 1
        chars.append(char)
    if phase != "space" and (keep or chars):
        words.append("".join(chars))
    return words
