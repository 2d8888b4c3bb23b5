"""What ``tests/test_docs.py`` checks in README.md and docs/: each check takes a document's text
and returns its problems as messages, so the tests can run it on the real docs (expecting none)
and on a made-up text (expecting the problem it must find).

The rules (docs/README.md, "Rules the tests keep"):

* **Routes**: a ``METHOD /path`` written anywhere must be served with that method; ``{x}`` and
  ``<x>`` are placeholders for one path segment (or part of one), a query string is ignored.
* **Settings**: a ``CEREBRASCAN_*`` name must be a setting (or ``CEREBRASCAN_CONFIG``, or a
  ``CEREBRASCAN_TEST_*`` variable the tests read); ``__FIELD`` after a full name in the same
  line is in that name's section; ``SECTION__FIELD`` without the prefix is the setting with it;
  ``CEREBRASCAN_SECTION__*`` must name a section. A code span that is a dotted key
  (``batching.runner_url``) must be a setting. In a table with a ``default`` column, the
  defaults of the row's settings are compared one by one (comma-separated, in order) with the
  model's (:func:`stated_default_matches`); a table of bare keys takes its section from the last
  ``CEREBRASCAN_SECTION__*`` named above it under the same heading.
* **Links and paths**: a relative Markdown link must resolve from the document's folder (and
  its ``#anchor`` be a heading there); a code span holding a path whose first folder exists in
  the repository must exist.
* **Commands** in ``sh``/``bash``/``console`` code blocks: ``cerebrascan ...`` must name a
  command whose ``--help`` succeeds and whose options exist; ``make X``: a Makefile target;
  ``bentoml serve module:Name``: ``Name`` defined in ``module.py``; ``python script.py`` and
  ``bash script.sh``: the file; ``python -m module``: importable; ``-f FILE`` of ``bentoml
  build`` / ``kubectl apply``: the file. Other programs (curl, docker, kubectl verbs, pip,
  vllm, openssl, export, ...) are not ours to check.
* **Figures** (README): ``<!-- figure Q = FILE#/json/pointer -->`` (``Q %`` multiplies the value
  by 100; ``max``/``min``/``mean`` before FILE aggregates a ``*`` in the pointer) says that the
  figure Q, written below it before the next heading, is that JSON value rounded to Q's
  decimals. Every decimal number in that stretch must be so cited (a ``≥``/``≤`` target
  excepted), and a link to ``models/*/metrics.json`` or ``benchmarks/results/*.json`` must be in
  such a stretch.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from cerebrascan.docs_reference.settings_table import SettingRow, stated_default_matches

REPO_ROOT = Path(__file__).resolve().parent.parent

HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
ROUTE_MENTION = re.compile(rf"\b({'|'.join(HTTP_METHODS)}) (/[^\s`'\")\]|,;]*)")
FULL_VARIABLE = re.compile(r"\bCEREBRASCAN_[A-Z0-9_]*[A-Z0-9*](?:__\*)?")
SHORT_VARIABLE = re.compile(r"(?<![A-Z0-9_])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*__[A-Z0-9_]*[A-Z0-9])\b")
CONTINUATION = re.compile(r"(?<![A-Z0-9_])__([A-Z][A-Z0-9_]*[A-Z0-9])\b")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FIGURE = re.compile(
    r"<!-- figure (?P<quoted>-?[0-9.]+)(?P<percent> %)? = (?:(?P<aggregate>max|min|mean) )?"
    r"(?P<file>[^#\s]+)#(?P<pointer>/\S*) -->"
)
DECIMAL = re.compile(r"(?<![\w.])(?P<sign>[≥≤] ?)?(?P<number>\d+\.\d+)(?![\w.]*\w)")
CITED_JSON = re.compile(r"\((?:\./)?((?:models/[^)/]+/metrics|benchmarks/results/[^)]+)\.json)\)")
TEST_ONLY_VARIABLES = ("CEREBRASCAN_CONFIG",)
FILE_SUFFIXES = frozenset({"py", "yaml", "yml", "md", "json", "toml", "txt", "sh", "ini", "j2"})
UNCHECKED_PROGRAMS = frozenset(
    {"curl", "docker", "export", "openssl", "pip", "vllm", "cd", "git", "source", "echo", "llama"}
)

Problem = str


def strip_code_blocks(text: str) -> str:
    """``text`` with fenced code blocks blanked (line numbers kept)."""
    return re.sub(r"```.*?```", lambda m: "\n" * m[0].count("\n"), text, flags=re.DOTALL)


def code_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    for match in re.finditer(r"```([\w+-]*)\n(.*?)```", text, flags=re.DOTALL):
        yield match[1].lower(), match[2]


# --- routes --------------------------------------------------------------------------------


def _route_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]+\}", template.rstrip("/") if template != "/" else template)
    return re.compile("^" + "[^/]+".join(re.escape(part) for part in parts) + "$")


def route_problems(text: str, served: list[tuple[str, str]]) -> list[Problem]:
    """``METHOD /path`` mentions that the app does not serve with that method."""
    patterns = [(method, _route_regex(path)) for method, path in served]
    problems: list[Problem] = []
    for match in ROUTE_MENTION.finditer(text):
        method, path = match[1], match[2].split("?")[0].split("#")[0].rstrip(".:")
        if path != "/":
            path = path.rstrip("/")
        concrete = re.sub(r"\{[^}]*\}|<[^>]*>", "X", path)
        if match[2].endswith(("...", "…")):  # "GET /studies/...": some route under the prefix
            prefix = match[2].rstrip(".…")
            if any(m == method and p.startswith(prefix) for m, p in served):
                continue
        if not any(m == method and p.match(concrete) for m, p in patterns):
            problems.append(f"{method} {match[2]} is not served")
    return problems


# --- settings ------------------------------------------------------------------------------


class SettingsIndex:
    """The settings' names: environment variables (every accepted name) -> row, sections."""

    def __init__(self, rows: list[SettingRow]) -> None:
        self.by_env: dict[str, SettingRow] = {}
        for row in rows:
            for name in (row.env, *row.other_env):
                self.by_env[name] = row
        self.by_key = {row.key: row for row in rows}
        self.sections = {row.key.split(".")[0] for row in rows if "." in row.key}

    def section_of(self, env: str) -> str | None:
        row = self.by_env.get(env)
        return row.key.split(".")[0] if row is not None and "." in row.key else None


def _test_variable_exists(name: str) -> bool:
    return any(name in path.read_text() for path in (REPO_ROOT / "tests").glob("*.py"))


def variables_in(line: str, index: SettingsIndex) -> tuple[list[SettingRow], list[Problem]]:
    """The settings a line names (full names, ``__FIELD`` continuations, ``SECTION__FIELD``)."""
    rows: list[SettingRow] = []
    problems: list[Problem] = []
    spans: list[tuple[int, str | None]] = []  # (position, section) of full names
    for match in FULL_VARIABLE.finditer(line):
        name = match[0]
        if name.endswith("__*"):
            section = name[len("CEREBRASCAN_") : -3].lower()
            if section not in index.sections:
                problems.append(f"{name}: no settings section {section!r}")
            spans.append((match.start(), section))
            continue
        if name in TEST_ONLY_VARIABLES or name == "CEREBRASCAN_*":
            continue
        if line[match.end() :].startswith("__<"):  # CEREBRASCAN_STORAGE__<FIELD>
            section = name[len("CEREBRASCAN_") :].lower()
            if section not in index.sections:
                problems.append(f"{name}__<...>: no settings section {section!r}")
            spans.append((match.start(), section))
            continue
        if name.startswith("CEREBRASCAN_TEST_"):
            if not _test_variable_exists(name):
                problems.append(f"{name}: no test reads it")
            continue
        row = index.by_env.get(name)
        if row is None:
            problems.append(f"{name} is not a setting")
            continue
        rows.append(row)
        spans.append((match.start(), index.section_of(name)))
    for match in CONTINUATION.finditer(line):
        before = [section for position, section in spans if position < match.start()]
        if not before or before[-1] is None:
            continue
        name = f"CEREBRASCAN_{before[-1].upper()}__{match[1]}"
        row = index.by_env.get(name)
        if row is None:
            problems.append(f"__{match[1]} (after a {before[-1]} setting): {name} is not a setting")
        else:
            rows.append(row)
    for match in SHORT_VARIABLE.finditer(line):
        if line[max(0, match.start() - 12) : match.start()].endswith("CEREBRASCAN_"):
            continue
        section = match[1].split("__")[0].lower()
        if section not in index.sections:
            continue  # not a settings name (another program's variable)
        name = f"CEREBRASCAN_{match[1]}"
        row = index.by_env.get(name)
        if row is None:
            problems.append(f"{match[1]}: {name} is not a setting")
        else:
            rows.append(row)
    return rows, problems


def _module_path(section: str, key: str) -> bool:
    """Whether ``section.key`` names a module or package of the repository instead."""
    for base in (REPO_ROOT, REPO_ROOT / "cerebrascan"):
        if (base / section / f"{key}.py").exists() or (base / section / key).is_dir():
            return True
    return False


def _split_defaults(cell: str) -> list[str]:
    """A default cell cut at top-level commas (not inside backticks, brackets or parentheses)."""
    parts: list[str] = []
    depth, in_code, current = 0, False, ""
    for character in cell:
        if character == "`":
            in_code = not in_code
        elif not in_code and character in "([{":
            depth += 1
        elif not in_code and character in ")]}":
            depth -= 1
        if character == "," and depth == 0 and not in_code:
            parts.append(current.strip())
            current = ""
            continue
        current += character
    parts.append(current.strip())
    return [part for part in parts if part]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def settings_problems(text: str, index: SettingsIndex) -> list[Problem]:
    """Names that are not settings, dotted keys that are not settings, defaults that differ."""
    problems: list[Problem] = []
    prose = strip_code_blocks(text)
    lines = text.splitlines()
    for line in lines:  # names, in prose and code blocks alike
        problems += variables_in(line, index)[1]
    for match in CODE_SPAN.finditer(prose):
        key = re.match(r"^([a-z_]+)\.([a-z0-9_]+)(?:\s*[:=].*)?$", match[1])
        if key is None or key[1] not in index.sections or _module_path(key[1], key[2]):
            continue
        if key[2] in FILE_SUFFIXES:  # a file name (`jobs.py`, `runner.yaml`), not a key
            continue
        if f"{key[1]}.{key[2]}" not in index.by_key:
            problems.append(f"`{match[1]}`: {key[1]}.{key[2]} is not a setting")
    problems += _default_problems(prose.splitlines(), index)
    return problems


def _default_problems(lines: list[str], index: SettingsIndex) -> list[Problem]:
    problems: list[Problem] = []
    section_context: str | None = None
    number = 0
    while number < len(lines):
        line = lines[number]
        if line.startswith("#"):
            section_context = None
        for match in FULL_VARIABLE.finditer(line):
            if match[0].endswith("__*"):
                section_context = match[0][len("CEREBRASCAN_") : -3].lower()
        is_table = line.startswith("|") and number + 1 < len(lines)
        if not is_table or not re.match(r"^\|[\s|:-]+\|$", lines[number + 1].strip()):
            number += 1
            continue
        header = [cell.lower() for cell in _cells(line)]
        number += 2
        default_column = next((i for i, cell in enumerate(header) if cell == "default"), None)
        while number < len(lines) and lines[number].startswith("|"):
            if default_column is not None:
                problems += _row_default_problems(
                    _cells(lines[number]), default_column, section_context, index
                )
            number += 1
    return problems


def _row_default_problems(
    cells: list[str], default_column: int, section: str | None, index: SettingsIndex
) -> list[Problem]:
    if default_column >= len(cells):
        return []
    rows: list[SettingRow] = []
    for position, cell in enumerate(cells):
        if position != default_column:
            rows += variables_in(cell, index)[0]
    if not rows and section is not None:
        key = re.fullmatch(r"`([a-z0-9_]+)`", cells[0])
        if key is None:
            return []
        row = index.by_key.get(f"{section}.{key[1]}")
        if row is None:
            return [f"`{key[1]}` under CEREBRASCAN_{section.upper()}__*: not a setting"]
        rows = [row]
    unique = list({row.key: row for row in rows}.values())
    if not unique:
        return []
    stated = _split_defaults(cells[default_column])
    if len(unique) == 1:
        stated = [cells[default_column]] if len(stated) != 1 else stated
    if len(stated) != len(unique):
        return [
            f"row of {[row.env for row in unique]}: {len(stated)} defaults stated "
            f"({cells[default_column]!r}), cannot pair them"
        ]
    return [
        f"{row.env}: default stated {value!r}, the model's is {row.default!r}"
        for row, value in zip(unique, stated, strict=True)
        if not stated_default_matches(value, row.default)
    ]


# --- links and paths -----------------------------------------------------------------------


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of the Markdown headings in ``text``."""
    anchors: set[str] = set()
    for line in strip_code_blocks(text).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match[1].lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def link_problems(text: str, document: Path) -> list[Problem]:
    """Relative links that do not resolve, anchors that are not headings, missing paths."""
    problems: list[Problem] = []
    prose = strip_code_blocks(text)
    for match in LINK.finditer(prose):
        target = match[1]
        if re.match(r"^[a-z]+:", target) or target.startswith(("<", "/")):
            continue  # a URL, or a server path (a route, not a file)
        path_part, _, anchor = target.partition("#")
        resolved = (document.parent / path_part).resolve() if path_part else document
        if not resolved.exists():
            problems.append(f"link {target}: {path_part} does not exist")
            continue
        if anchor and resolved.suffix == ".md":
            if anchor not in heading_anchors(resolved.read_text()):
                problems.append(f"link {target}: no heading #{anchor} in {resolved.name}")
    top_folders = {p.name for p in REPO_ROOT.iterdir() if p.is_dir() and p.name != "data"}
    for match in CODE_SPAN.finditer(prose):
        span = match[1].strip()
        if re.search(r"[\s<>{}*$?]|\.\.\.|…", span) or "/" not in span or span.startswith("/"):
            continue
        if span.split("/")[0] not in top_folders or "://" in span:
            continue
        path = span.split(":")[0] if re.search(r"\.py:\w", span) else span
        if not (REPO_ROOT / path.rstrip("/")).exists():
            problems.append(f"path `{span}` does not exist")
    return problems


# --- commands ------------------------------------------------------------------------------


def shell_commands(body: str) -> Iterator[list[str]]:
    """The commands of a shell code block: continuations joined, split at ``&&``/``;``/``|``,
    comments, prompts and leading ``VAR=value`` assignments removed."""
    joined = re.sub(r"\\\n\s*", " ", body)
    for line in joined.splitlines():
        line = re.sub(r"^\s*\$ ", "", line)
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        command: list[str] = []
        for token in [*tokens, "&&"]:
            if token in ("&&", "||", ";", "|", "&"):
                while command and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", command[0]):
                    command.pop(0)
                if command:
                    yield command
                command = []
            else:
                command.append(token)


def _click_problems(arguments: list[str], main: click.Group) -> list[Problem]:
    command: click.Command = main
    path: list[str] = []
    rest = list(arguments)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        if sub is None:
            return [f"cerebrascan {' '.join([*path, rest[0]])}: no such command"]
        path.append(rest.pop(0))
        command = sub
    result = CliRunner().invoke(main, [*path, "--help"])
    if result.exit_code != 0:
        return [f"cerebrascan {' '.join(path)} --help exits {result.exit_code}"]
    known = {name for param in command.params for name in getattr(param, "opts", [])}
    known |= {name for param in command.params for name in getattr(param, "secondary_opts", [])}
    unknown = [
        token.split("=")[0]
        for token in rest
        if token.startswith("--") and token.split("=")[0] not in known
    ]
    return [f"cerebrascan {' '.join(path)}: no option {name}" for name in unknown]


def _make_targets() -> set[str]:
    makefile = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", makefile, flags=re.MULTILINE))


def command_problems(text: str, main: click.Group) -> list[Problem]:
    """Commands of the shell code blocks that would not run as written (see module doc)."""
    problems: list[Problem] = []
    targets = _make_targets()
    for language, body in code_blocks(text):
        if language not in ("", "sh", "bash", "console", "shell"):
            continue
        for command in shell_commands(body):
            problems += _one_command_problems(command, main, targets)
    return problems


def _one_command_problems(
    command: list[str], main: click.Group, targets: set[str]
) -> list[Problem]:
    program = command[0].split("/")[-1]
    arguments = command[1:]
    if program in ("cerebrascan",):
        return _click_problems(arguments, main)
    if program.startswith("python"):
        if arguments[:2] == ["-m", "cerebrascan.cli"]:
            return _click_problems(arguments[2:], main)
        if arguments[:1] == ["-m"] and len(arguments) > 1:
            found = importlib.util.find_spec(arguments[1].split(".")[0]) is not None
            return [] if found else [f"python -m {arguments[1]}: no such module"]
        if arguments and arguments[0].endswith(".py"):
            exists = (REPO_ROOT / arguments[0]).exists()
            return [] if exists else [f"python {arguments[0]}: no such file"]
        return []
    if program == "bash" and arguments and arguments[0].endswith(".sh"):
        return [] if (REPO_ROOT / arguments[0]).exists() else [f"bash {arguments[0]}: no such file"]
    if program == "make":
        goals = [a for a in arguments if not a.startswith("-") and "=" not in a]
        return [f"make {goal}: no such target" for goal in goals if goal not in targets]
    if program == "bentoml" and arguments[:1] == ["serve"] and len(arguments) > 1:
        module, _, name = arguments[1].partition(":")
        source = REPO_ROOT / f"{module.replace('.', '/')}.py"
        if not source.exists():
            return [f"bentoml serve {arguments[1]}: no {source.name}"]
        defined = re.search(rf"^(?:class {name}\b|{name}\s*=)", source.read_text(), re.MULTILINE)
        return [] if defined else [f"bentoml serve {arguments[1]}: {name} not in {source.name}"]
    if program in ("bentoml", "kubectl") and "-f" in arguments:
        problems = []
        for position, token in enumerate(arguments):
            if token == "-f" and position + 1 < len(arguments):
                if not (REPO_ROOT / arguments[position + 1]).exists():
                    problems.append(f"{program} -f {arguments[position + 1]}: no such file")
        return problems
    if program == "alembic" and "-c" in arguments:
        config = arguments[arguments.index("-c") + 1]
        return [] if (REPO_ROOT / config).exists() else [f"alembic -c {config}: no such file"]
    if program == "dvc" and arguments[:1] == ["repro"]:
        return [] if (REPO_ROOT / "dvc.yaml").exists() else ["dvc repro: no dvc.yaml"]
    return []


# --- figures -------------------------------------------------------------------------------

AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "max": max,
    "min": min,
    "mean": statistics.fmean,
}


def _resolve_pointer(document: Any, pointer: str) -> list[Any]:
    values = [document]
    for part in pointer.strip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        following: list[Any] = []
        for value in values:
            if part == "*":
                following += list(value.values()) if isinstance(value, dict) else list(value)
            elif isinstance(value, list):
                following.append(value[int(part)])
            else:
                following.append(value[part])
        values = following
    return values


def figure_problems(text: str) -> list[Problem]:
    """Figures that are not what their JSON says, uncited figures, uncited JSON links."""
    problems: list[Problem] = []
    lines = text.splitlines()
    covered: set[int] = set()
    scope_numbers: dict[int, set[str]] = {}  # end of a figure stretch -> figures cited in it
    scope_starts: dict[int, int] = {}
    for number, line in enumerate(lines):
        match = FIGURE.search(line)
        if match is None:
            continue
        quoted = match["quoted"]
        source = REPO_ROOT / match["file"]
        label = f"figure {quoted}{match['percent'] or ''} = {match['file']}#{match['pointer']}"
        if not source.exists():
            problems.append(f"{label}: {match['file']} does not exist")
            continue
        try:
            values = _resolve_pointer(json.loads(source.read_text()), match["pointer"])
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            problems.append(f"{label}: pointer does not resolve ({exc!r})")
            continue
        if match["aggregate"]:
            value = AGGREGATES[match["aggregate"]]([float(v) for v in values])
        elif len(values) != 1:
            problems.append(f"{label}: '*' needs max, min or mean")
            continue
        else:
            value = float(values[0])
        if match["percent"]:
            value *= 100
        decimals = len(quoted.split(".")[1]) if "." in quoted else 0
        if f"{value:.{decimals}f}" != quoted:
            problems.append(f"{label}: the JSON says {value:.{decimals}f}")
        end = next(
            (n for n in range(number + 1, len(lines)) if lines[n].startswith("#")), len(lines)
        )
        scope = range(number + 1, end)
        covered.update(scope)
        written = quoted + (" %" if match["percent"] else "")
        body = "\n".join(lines[n] for n in scope if not FIGURE.search(lines[n]))
        if not re.search(rf"(?<![\d.]){re.escape(written)}(?![\d])", body):
            problems.append(f"{label}: {written} is not written below it")
        scope_numbers.setdefault(end, set()).add(quoted)
        scope_starts[end] = min(scope_starts.get(end, number), number)
    for end, cited in scope_numbers.items():
        for n in range(scope_starts[end], end):
            if FIGURE.search(lines[n]):
                continue
            for decimal in DECIMAL.finditer(lines[n]):
                if decimal["sign"] or decimal["number"] in cited:
                    continue
                problems.append(f"line {n + 1}: figure {decimal['number']} cites no JSON")
    for number, line in enumerate(lines):
        for link in CITED_JSON.finditer(line):
            if number not in covered:
                problems.append(f"line {number + 1}: links {link[1]} without a figure comment")
    return problems
