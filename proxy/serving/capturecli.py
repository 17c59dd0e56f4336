"""`club-proxy capture export FILE.jsonl --har OUT.har`: a capture as HAR 1.2.

The HAR opens in a browser's developer tools (Network tab, import) and is
read back by `club-proxy compare` like the capture itself. Exit 0, or 2 when
the input cannot be read or the output cannot be written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.shadow.records import RecordError, read_records, to_har

if TYPE_CHECKING:
    import argparse

__all__ = ["add_capture_commands", "run_capture_command"]


def add_capture_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `capture export` to the CLI's subcommands."""
    capture = commands.add_parser("capture", help="work with capture files")
    actions = capture.add_subparsers(dest="capture_command", required=True)
    export = actions.add_parser("export", help="write a capture file as HAR 1.2")
    export.add_argument("capture", type=Path, help="a capture file (JSON lines)")
    export.add_argument("--har", type=Path, required=True, help="the HAR file to write")
    export.add_argument("--scheme", default="http", help="scheme of the URLs in the HAR (http)")


def run_capture_command(args: argparse.Namespace) -> int:
    try:
        records = list(read_records(args.capture))
        text = json.dumps(to_har(records, scheme=args.scheme), ensure_ascii=False, indent=1)
        args.har.write_text(text + "\n", encoding="utf-8")
    except (RecordError, OSError) as exc:
        print(f"club-proxy: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's own message
        return 2
    print(f"{len(records)} exchanges written to {args.har}")  # noqa: T201 - the CLI's own message
    return 0
