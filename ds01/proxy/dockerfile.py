"""The images a classic (non-BuildKit) `docker build` reads, found in its Dockerfile before the engine sees it.

A build reads an image for each `FROM` and `COPY --from`, also in the ONBUILD triggers a `FROM` runs. The file is
read as the engine's parser reads it (moby's vendored buildkit frontend/dockerfile parser, instructions and shell,
engines 20.10 to 28): directives, continuations, comments, flags, the ARGs before the first FROM and the
substitutions FROM may use. Where engine versions read a construct differently, or ds01 cannot tell what the
engine will read, the Dockerfile is refused: a check made on a guess would let a build read what was not checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from enum import StrEnum

from ds01.proxy.dockerfilelines import CLASSIC, FIELDS, DockerfileError, Instruction, parse, split_words

_ONBUILD = re.compile(r"^[\t\n\f\r ]*ONBUILD[\t\n\f\r ]*", re.IGNORECASE | re.ASCII)
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*")
_REFERENCE = re.compile(r"[\x21-\x7e]+")
_GO_INT = re.compile(r"[+-]?[0-9]+")
# Build args any FROM may use without an ARG; engines before 23.0 lack the ALL_PROXY pair.
_PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY",
               "no_proxy")
_ALL_PROXY_ARGS = ("ALL_PROXY", "all_proxy")


class ReadKind(StrEnum):
    FROM = "FROM"
    COPY_FROM = "COPY --from"


@dataclass(frozen=True)
class ImageRead:
    kind: ReadKind
    reference: str  # as written after substitution: a name, name:tag, name@digest or image ID
    line: int  # the Dockerfile line of the instruction, or of the FROM whose ONBUILD trigger made the read
    trigger: str | None = None  # that trigger, as the image's Config.OnBuild lists it


@dataclass
class _Stage:
    name: str | None
    triggers: list[str] = field(default_factory=list)  # what its image's Config.OnBuild will list


@dataclass
class _Build:
    base_triggers: Mapping[str, Sequence[str]]
    stages: list[_Stage] = field(default_factory=list)
    reads: list[ImageRead] = field(default_factory=list)


def image_reads(dockerfile: str, build_args: Mapping[str, str | None],
                triggers: Mapping[str, Sequence[str]] | None = None) -> list[ImageRead]:
    """The images the build reads, in order; stages resolve to stages and `scratch` reads nothing. `triggers`
    maps a FROM reference to its image's Config.OnBuild: pass what inspecting the FROM images found, to learn
    what their triggers read. Raises DockerfileError for what the engine refuses or ds01 cannot resolve."""
    reads = _analyse(dockerfile, build_args, triggers or {}, _PROXY_ARGS + _ALL_PROXY_ARGS)
    if any(build_args.get(name) is not None for name in _ALL_PROXY_ARGS):
        older = None
        with suppress(DockerfileError):
            older = _analyse(dockerfile, build_args, triggers or {}, _PROXY_ARGS)
        if older != reads:
            raise DockerfileError("the build arg ALL_PROXY changes which images this Dockerfile reads: engines "
                                  "before 23.0 ignore it unless an ARG declares it. Declare ARG ALL_PROXY (or "
                                  "all_proxy) before the first FROM, or drop the build arg.")
    return reads


def onbuild_reads(triggers: Sequence[str], stages: Sequence[str | None] = (), line: int = 0) -> list[ImageRead]:
    """The images an image's ONBUILD triggers read, run by a FROM on `line` after the build's `stages` (their
    names, None for unnamed ones), which a trigger's COPY --from may name or number."""
    build = _Build({}, [_Stage(name.lower() if name else None) for name in stages] + [_Stage(None)])
    _run_triggers(triggers, build, line)
    return build.reads


def _analyse(text: str, args: Mapping[str, str | None], triggers: Mapping[str, Sequence[str]],
             builtins: tuple[str, ...]) -> list[ImageRead]:
    instructions, escape = parse(text)
    declared: dict[str, str | None] = {}
    build = _Build(triggers)
    for ins in instructions:
        if ins.name == "from":
            _from(ins, _Lexer(escape, _meta_env(declared, args, builtins), ins.line), build)
        elif ins.name == "arg" and not build.stages:
            _meta_arg(ins, _Lexer(escape, _meta_env(declared, args, builtins), ins.line), declared)
        elif not build.stages:
            raise DockerfileError(f"{ins.name.upper()} comes before the first FROM, where only ARG may", ins.line)
        elif ins.name == "onbuild":
            build.stages[-1].triggers.append(_onbuild_expression(ins))
        elif ins.name in ("copy", "add", "run"):
            _command(ins, build, ins.line)
    if not build.stages:
        raise DockerfileError("the Dockerfile has no FROM; start it with FROM IMAGE", instructions[-1].line)
    return build.reads


def _meta_env(declared: Mapping[str, str | None], args: Mapping[str, str | None],
              builtins: tuple[str, ...]) -> dict[str, str]:
    """What FROM and the first ARGs see: a build arg overrides an ARG's default; with neither, the name is unset."""
    env: dict[str, str] = {}
    for name in [*declared, *builtins]:
        if (value := args.get(name)) is not None or (value := declared.get(name)) is not None:
            env[name] = value
    return env


def _meta_arg(ins: Instruction, lexer: _Lexer, declared: dict[str, str | None]) -> None:
    words = split_words(ins.args, lexer.escape)
    if not words:
        raise DockerfileError("ARG needs a name: write ARG NAME or ARG NAME=DEFAULT", ins.line)
    pairs: list[tuple[str, str | None]] = []
    for word in words:  # the words of one ARG see the ARGs before it, not each other
        name, eq, default = word.partition("=")
        if eq and not name:
            raise DockerfileError(f"ARG {word!r} has no name before the =", ins.line)
        if "=" in (name := lexer.word(name)):
            raise DockerfileError(f"the ARG name in {word!r} expands to {name!r}, which holds an =", ins.line)
        pairs.append((name, lexer.word(default) if eq else None))
    declared.update(pairs)


def _from(ins: Instruction, lexer: _Lexer, build: _Build) -> None:
    tokens = FIELDS.split(ins.args) if ins.args else []
    named = len(tokens) == 3 and len(tokens[1]) == 2 and tokens[1][0] in "aA" and tokens[1][1] in "sS\u017f"
    if not named and len(tokens) != 1:
        raise DockerfileError("FROM takes an image and optionally AS NAME: write FROM IMAGE [AS NAME]", ins.line)
    stage_name = tokens[2].lower() if named else None
    if stage_name is not None and not (stage_name.isascii() and _STAGE_NAME.fullmatch(stage_name)):
        raise DockerfileError(f"{tokens[2]!r} is not a stage name: start with a letter, then use letters, "
                              "digits, '-', '_' or '.'", ins.line)
    if stage_name is not None and any(stage.name == stage_name for stage in build.stages):
        raise DockerfileError(f"the stage name {stage_name!r} is already used; name each stage once", ins.line)
    if not (name := lexer.word(tokens[0])):
        raise DockerfileError(f"the image {tokens[0]!r} expands to nothing; set the ARG or build arg it uses", ins.line)
    base = next((stage for stage in build.stages if name.isascii() and stage.name == name.lower()), None)
    build.stages.append(_Stage(stage_name))
    if base is not None:
        _run_triggers(base.triggers, build, ins.line)
    elif name != "scratch":
        reference = _reference(ins.line, name)
        build.reads.append(ImageRead(ReadKind.FROM, reference, ins.line))
        _run_triggers(build.base_triggers.get(reference, ()), build, ins.line)


def _run_triggers(triggers: Sequence[str], build: _Build, line: int) -> None:
    """A new stage's base triggers, run as the engine runs them: each parsed afresh as a one-line Dockerfile."""
    for trigger in triggers:
        try:
            instructions, _ = parse(trigger)
            if len(instructions) != 1 or instructions[0].name == "from":
                raise DockerfileError("a trigger must be one instruction other than FROM")
            if instructions[0].name == "onbuild":
                build.stages[-1].triggers.append(_onbuild_expression(instructions[0]))
            elif instructions[0].name in ("copy", "add", "run"):
                _command(instructions[0], build, line, trigger)
        except DockerfileError as exc:
            raise DockerfileError(f"the FROM runs the ONBUILD trigger {trigger!r}: {exc.what}", line or None) from None


def _command(ins: Instruction, build: _Build, line: int, trigger: str | None = None) -> None:
    flags: dict[str, str | None] = {}
    for word in ins.flags:
        name, eq, value = word[2:].partition("=")
        if name == "from" and name in flags:
            raise DockerfileError("--from is given twice; give it once", ins.line)
        flags[name] = value if eq else None
    if ins.name == "run" and flags:
        raise DockerfileError(f"RUN --{next(iter(flags))} needs BuildKit; {CLASSIC}. Remove the flag.", ins.line)
    if ins.name == "add" and "from" in flags:
        raise DockerfileError("ADD has no --from flag; copy from an image or stage with COPY --from", ins.line)
    if ins.name != "copy" or "from" not in flags:
        return
    if (origin := flags["from"]) is None:
        raise DockerfileError("--from needs a value: write --from=NAME (the engine refuses --from NAME)", ins.line)
    if "$" in origin:
        raise DockerfileError(f"--from={origin} names a variable, but the classic builder does not "
                              "substitute variables in --from; write the stage or image name out", ins.line)
    if origin and not _is_stage(ins.line, origin, build.stages[:-1]):  # an empty --from copies the context
        build.reads.append(ImageRead(ReadKind.COPY_FROM, _reference(ins.line, origin), line, trigger))


def _is_stage(line: int, value: str, earlier: Sequence[_Stage]) -> bool:
    """--from names an earlier stage (in any case) or numbers one; anything else is an image."""
    if value.isascii() and any(stage.name == value.lower() for stage in earlier):
        return True
    if not _GO_INT.fullmatch(value) or not -2**63 <= int(value) < 2**63:
        return False
    if int(value) == len(earlier):
        raise DockerfileError(f"--from={value} is the stage being built; copy from an earlier stage", line)
    if not 0 <= int(value) < len(earlier):
        raise DockerfileError(f"--from={value} is out of range: {len(earlier)} stage(s) come before this one", line)
    return True


def _reference(line: int, name: str) -> str:
    if "$" in name:
        raise DockerfileError(f"the image {name!r} still holds a $ after substitution; write the name out", line)
    if not _REFERENCE.fullmatch(name):
        raise DockerfileError(f"{name!r} is not an image reference: it has spaces, controls or non-ASCII", line)
    return name


def _onbuild_expression(ins: Instruction) -> str:
    inner = FIELDS.split(ins.args, maxsplit=1)[0].upper()
    if ins.flags or inner in ("", "ONBUILD", "MAINTAINER", "FROM"):
        raise DockerfileError("ONBUILD takes one instruction, not ONBUILD, MAINTAINER or FROM, and no flags", ins.line)
    return _ONBUILD.sub("", ins.original, count=1)


class _Lexer:
    """The engine's substitution of one word (ProcessWord): quotes, escapes, $NAME and ${NAME} with -, +, ? or
    :-, :+, :?. The pattern forms (#, %, /) are refused: engines before 26.0 reject them, ds01 does not evaluate."""

    def __init__(self, escape: str, env: Mapping[str, str], line: int) -> None:
        self.escape, self.env, self.line = escape, env, line

    def word(self, text: str) -> str:
        return self._until(text, 0, "")[0]

    def _fail(self, text: str, what: str) -> DockerfileError:
        return DockerfileError(f"in {text!r}, {what}", self.line)

    def _until(self, text: str, index: int, stop: str) -> tuple[str, int]:
        out: list[str] = []
        while index < len(text) and not (stop and text[index] == stop):
            char = text[index]
            if char == "$":
                value, index = self._dollar(text, index + 1)
            elif char == "'":
                if (close := text.find("'", index + 1)) < 0:
                    raise self._fail(text, "a ' quote is not closed")
                value, index = text[index + 1:close], close + 1
            elif char == '"':
                value, index = self._double(text, index + 1)
            elif char == self.escape and index + 1 == len(text):
                index += 1  # a trailing escape is dropped
                break
            else:
                value, index = (text[index + 1], index + 2) if char == self.escape else (char, index + 1)
            out.append(value)
        if stop and index >= len(text):
            raise self._fail(text, "a ${ is not closed by }")
        return "".join(out), index + 1 if stop else index

    def _double(self, text: str, index: int) -> tuple[str, int]:
        out: list[str] = []
        while index < len(text) and text[index] != '"':
            char, index = text[index], index + 1
            if char == "$":
                char, index = self._dollar(text, index)
            elif char == self.escape and index < len(text) and text[index] in ('"', "$", self.escape):
                char, index = text[index], index + 1
            elif char == self.escape and index == len(text):
                continue
            out.append(char)
        if index >= len(text):
            raise self._fail(text, 'a " quote is not closed')
        return "".join(out), index + 1

    def _name(self, text: str, index: int) -> tuple[str, int]:
        """A variable name: digits, one special parameter character, or letters, digits and '_'."""
        if text[index:index + 1] in ("@", "*", "#", "?", "-", "$", "!"):
            return text[index], index + 1
        end, digits = index, text[index:index + 1].isdecimal()
        while end < len(text) and (text[end].isdecimal() or (
                not digits and (text[end].isalpha() or text[end] == "_"))):
            end += 1
        return text[index:end], end

    def _dollar(self, text: str, index: int) -> tuple[str, int]:
        if text[index:index + 1] != "{":
            name, index = self._name(text, index)
            return (self.env.get(name, "") if name else "$"), index
        if text[index + 1:index + 2] in ("", "{", "}", ":"):
            raise self._fail(text, "a ${...} is empty or malformed")
        name, index = self._name(text, index + 1)
        operator, index = text[index:index + 1], index + 1
        if operator == "}":
            return self.env.get(name, ""), index
        if colon := operator == ":":
            operator, index = text[index:index + 1], index + 1
        if not operator or operator not in "-+?":
            raise self._fail(text, f"${{{name}{':' * colon}{operator}...}} is not a substitution ds01 evaluates; "
                                   "use ${NAME}, ${NAME:-default}, ${NAME:+alt} or ${NAME:?message}")
        word, index = self._until(text, index, "}")
        value = self.env.get(name)
        if value is not None and not (colon and value == ""):
            return (word if operator == "+" else value), index
        if operator == "?":
            raise self._fail(text, f"{name} is {'unset or empty' if colon else 'unset'}: {word or 'set it'}")
        return (word if operator == "-" else ""), index
