"""Readers for the deployment files the tests check: Dockerfile, .dockerignore, PromQL, compose values.

Each reader covers what deploy/ uses and refuses what it does not understand, so a new construct in a
deploy file fails loudly here instead of being skipped.
"""

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

# ---------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    """Upper-case instruction name (FROM, RUN, ...)."""
    value: str
    """Everything after the keyword, continuation lines joined."""
    line: int


@dataclass
class Stage:
    base: str
    """The FROM image with global ARG defaults substituted."""
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.value):
                key, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"line {instruction.line}: use ENV KEY=VALUE (the legacy form is not read here)")
                out[key] = value
        return out


KNOWN = {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD", "LABEL"}


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join `\\` continuations; drop comments (also between continued lines) and blank lines."""
    out: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        out.append((start, " ".join(part for part in buffer if part)))
        buffer = []
    if buffer:
        raise ValueError(f"line {start}: the file ends inside a continued line")
    return out


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile, in order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in _logical_lines(text):
        keyword, _, value = logical.partition(" ")
        keyword = keyword.upper()
        if keyword not in KNOWN:
            raise ValueError(f"line {line}: {keyword} is not an instruction this reader knows")
        if keyword == "ARG" and not stages:
            name, _, default = value.partition("=")
            args[name.strip()] = default.strip()
            continue
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=image, name=name))
            continue
        if not stages:
            raise ValueError(f"line {line}: {keyword} before the first FROM")
        stages[-1].instructions.append(Instruction(keyword, value.strip(), line))
    return stages


def exec_form(value: str) -> list[str]:
    """A JSON-array (exec form) argument; shell form is refused: signals must reach the gateway."""
    parsed = json.loads(value)
    if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
        raise ValueError(f"not an exec-form JSON array: {value}")
    return parsed


def healthcheck_command(value: str) -> list[str]:
    """HEALTHCHECK [--opt=v ...] CMD [...] -> the command."""
    options, sep, command = value.partition("CMD ")
    if not sep or any(not o.startswith("--") for o in options.split()):
        raise ValueError(f"HEALTHCHECK without CMD or with unknown words: {value}")
    return exec_form(command)


def copy_parts(value: str) -> tuple[dict[str, str], list[str], str]:
    """COPY [--flag=v ...] src... dest -> (flags, sources, dest)."""
    words = shlex.split(value)
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
    rest = [w for w in words if not w.startswith("--")]
    return flags, rest[:-1], rest[-1]


# ---------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per rule, in order; the last rule matching a path or a parent of it decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip("/")))
        rules.append((not include, _pattern_regex(pattern)))
    return rules


def in_build_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for excludes, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = excludes
    return not excluded


# ---------------------------------------------------------------- PromQL

_FUNCTIONS_AND_KEYWORDS = frozenset(
    """
    sum min max avg count stddev stdvar topk bottomk quantile count_values group rate irate increase
    delta idelta deriv histogram_quantile clamp_min clamp_max abs sum_over_time avg_over_time
    max_over_time min_over_time label_values vector scalar time by without on ignoring group_left
    group_right bool and or unless offset
    """.split()  # noqa: SIM905 - a word list reads better than 41 quoted lines
)


@dataclass
class Selector:
    metric: str
    labels: set[str]


@dataclass
class Query:
    selectors: list[Selector]
    grouping: set[str]
    """Labels named in by(...)/on(...)/ignoring(...)/without(...)."""


def parse_promql(expr: str) -> Query:
    """Metric selectors (with the labels they match on) and grouping labels of a PromQL expression."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may hold anything
    text = re.sub(r"\$\{?\w+\}?", "1", text)  # dashboard variables ($__rate_interval, ${x})
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    grouping: set[str] = set()
    for names in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        grouping |= {n.strip() for n in names.split(",") if n.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    selectors: list[Selector] = []
    pos = 0
    token = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
    while (m := token.search(text, pos)) is not None:
        name, pos = m.group(0), m.end()
        after = text[pos:].lstrip()
        if name in _FUNCTIONS_AND_KEYWORDS or after.startswith("("):
            if name not in _FUNCTIONS_AND_KEYWORDS:
                raise ValueError(f"unknown PromQL function {name!r} in {expr!r}")
            continue
        labels: set[str] = set()
        if after.startswith("{"):
            close = text.index("}", pos)
            body = text[text.index("{", pos) + 1 : close]
            labels = {part.split("=")[0].split("!")[0].strip() for part in body.split(",") if part.strip()}
            pos = close + 1
        selectors.append(Selector(name, labels))
    return Query(selectors, grouping)


# ---------------------------------------------------------------- compose

_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?+])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} against `env` (a missing required one raises)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        value = env.get(name)
        empty = value is None or (op.startswith(":") and value == "")
        if op.endswith("?") and empty:
            raise KeyError(f"{name}: {arg}")
        if op.endswith("-") and empty:
            return arg
        return value or ""

    return _INTERPOLATION.sub(one, value)


def is_reference(value: str) -> bool:
    """The whole value is one ${VAR...} interpolation (no literal part)."""
    m = _INTERPOLATION.fullmatch(value)
    literal_default = (m.group(2) or "").endswith("-") and bool(m.group(3)) if m else False
    return m is not None and not literal_default
