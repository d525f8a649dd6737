"""Writes ``docs/commands.md``: every command's ``--help``, as the parsers print it.

    python tools/commands_doc.py          # rewrite docs/commands.md
    python tools/commands_doc.py --check  # exit 1 when it differs from the parsers

The help is rendered 100 columns wide whatever the terminal, so the file is the same on every
machine; ``tests/test_cli.py`` fails when it is stale.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
WIDTH = "100"


def commands_markdown() -> str:
    from rcnn.cli import COMMANDS, build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse reads the width from here
    try:
        parser = build_parser()
        subparsers = next(a for a in parser._actions if a.choices and "demo" in a.choices)
        parts = [
            "# Commands",
            "",
            "Every command's `--help`, generated from the parsers by `python "
            "tools/commands_doc.py` (a test fails when this file is stale). The guide to them "
            "is [guide.md](guide.md).",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
        ]
        for name in COMMANDS:
            parts += ["", f"## rcnn {name}", "", "```text",
                      subparsers.choices[name].format_help().rstrip(), "```"]  # fmt: skip
        return "\n".join(parts) + "\n"
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def main() -> int:
    text = commands_markdown()
    if "--check" in sys.argv[1:]:
        if DOC.read_text() != text:
            print(f"{DOC} is stale: run python tools/commands_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
