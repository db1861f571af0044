"""The result files and the words update_readme.py renders them with: reading CSV, JSON and train.py logs, the
docs/templates/*.md parts, Markdown tables and links."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
from typing import Callable, Optional

from smollm2.common import SmolError
from smollm2.metrics import LOG_MARKS, MetricsError, RunSummary, number, read_events, summarize

MISSING = "—"  # cell text for an empty or unparsable number (e.g. a failed variant)
TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "templates")


class InputError(SmolError):
    """An input that is not what it should be (binary, not UTF-8, not a train.py log, a template's slip)."""

    code = 2


# ----------------------------------------------------------------------------------------------
# reading the inputs


def read_text(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    if b"\x00" in raw:
        raise InputError(f"{path} is binary (NUL bytes), not a text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start})") from e


def read_json(path: str):
    try:
        return json.loads(read_text(path))
    except ValueError as err:
        raise InputError(f"{path} is not JSON ({err})") from err


class Row(dict):
    """A CSV row that names its file when a renderer asks for a column the file lacks (an older or edited
    table): one InputError line instead of a KeyError traceback."""

    def __init__(self, path: str, fields: dict):
        super().__init__(fields)
        self.path = path

    def __missing__(self, column: str):
        raise InputError(f"{self.path} has no column {column!r} (its columns: {', '.join(self) or 'none'}); "
                         f"write it again with the script that makes it")


def read_csv(path: str) -> tuple[list[str], list[Row]]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    rows = [Row(path, {k: (v or "") for k, v in r.items() if k is not None}) for r in reader]
    return list(reader.fieldnames or []), rows


def rows_of(path: str) -> list[Row]:
    """A CSV's rows, none when the file is absent."""
    return read_csv(path)[1] if os.path.isfile(path) else []


def rows_by(path: str, key: str) -> dict[str, Row]:
    return {r[key]: r for r in rows_of(path) if r.get(key)}


def read_train_log(path: str) -> Optional[str]:
    """The log's text, None if there is none; InputError if the file is not a train.py log."""
    if not os.path.isfile(path):
        return None
    text = read_text(path)
    if text.strip() and not any(r.match(line) for line in text.splitlines() for r in LOG_MARKS):
        raise InputError(f"{path} is not a train.py log (no step, RESUME, CHECKPOINT or 'Starting from scratch' line)")
    return text


def run_summary(log_path: str, text: str) -> RunSummary:
    """What the run's records say (metrics.jsonl beside the log, else the log's text)."""
    try:
        return summarize(read_events(log_path, text))
    except MetricsError as e:
        raise InputError(str(e)) from e


# ----------------------------------------------------------------------------------------------
# the words: docs/templates/<block>.md, a part per "<!-- name -->" line, its {placeholders} filled by str.format


@functools.lru_cache(maxsize=None)
def template(block: str) -> dict[str, str]:
    """A block's template file as {part name: its text}, blank lines around each part dropped."""
    path = os.path.join(TEMPLATES, f"{block}.md")
    try:
        pieces = re.split(r"^<!-- (\w+) -->\n", read_text(path), flags=re.M)
    except OSError as err:
        raise InputError(f"cannot read the template {path} ({err.strerror})") from err
    return {name: text.strip("\n") for name, text in zip(pieces[1::2], pieces[2::2])}


def say(block: str, part: str, **values) -> str:
    """One part of a block's template with its placeholders filled; a part or placeholder the template lacks
    or misspells is an InputError naming the file."""
    where = os.path.join(TEMPLATES, f"{block}.md")
    if part not in template(block):
        raise InputError(f"{where} has no part <!-- {part} -->")
    try:
        return template(block)[part].format(**values)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(f"{where}: part <!-- {part} --> has a placeholder update_readme.py does not fill ({err})") from err


def labels(block: str, part: str) -> dict[str, str]:
    """A part written as "key: words" lines (table rows, case names), in its order."""
    return dict(line.split(": ", 1) for line in say(block, part).splitlines())


def plural(n) -> str:
    return "" if n == 1 else "s"


# ----------------------------------------------------------------------------------------------
# tables and links


def _cell(text) -> str:
    return " ".join(str(text if text is not None else "").split()).replace("|", "\\|")


def fmt(scale: float, digits: int, thousands: bool = False) -> Callable[[str], str]:
    """A cell fmt: the number times `scale` with `digits` decimals, MISSING when there is none."""
    def f(s: str) -> str:
        v = number(s)
        return MISSING if v is None else f"{v * scale:,.{digits}f}" if thousands else f"{v * scale:.{digits}f}"
    return f


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Numbers are right-aligned so that digits line up when rendered."""
    def numeric(column: list[str]) -> bool:
        vals = [c for c in column if c not in ("", MISSING)]
        return bool(vals) and all(number(c) is not None for c in vals)
    align = ["---:" if numeric([r[i] for r in rows]) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows])


def rel(path: str, readme_dir: str) -> str:
    return os.path.relpath(os.path.abspath(path), readme_dir).replace(os.sep, "/")


def link(path: str, readme_dir: str) -> str:
    return rel(path, readme_dir).replace(" ", "%20")


def images(pngs: list[str], readme_dir: str) -> str:
    return "\n\n".join(f"![{os.path.splitext(os.path.basename(p))[0]}]({link(p, readme_dir)})" for p in pngs)
