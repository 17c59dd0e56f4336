"""Write one benchmark's section of bench/RESULTS.md, leaving the others alone."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmark results\n\n"
    "Each section is written by `make bench` (`python -m bench NAME` for one) and compares\n"
    "against a baseline run side by side in the same run, so read the ratios: the machine\n"
    "is shared and noisy, absolute numbers drift.\n"
)


def record(name: str, markdown: str) -> None:
    """Replace (or append) the section `name` of RESULTS.md with `markdown`."""
    stamp = f"_{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python {platform.python_version()}, {platform.machine()}_"
    section = f"<!-- bench:{name} -->\n## {name}\n\n{stamp}\n\n{markdown.strip()}\n<!-- /bench:{name} -->\n"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n", re.DOTALL
    )
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else f"{text.rstrip()}\n\n{section}"
    )
    RESULTS.write_text(text, encoding="utf-8")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub table from string cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
