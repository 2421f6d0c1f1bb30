"""`dsl-sweep`, the command line: one module per command, each a thin typed call into the library.

`sweeps.cli.app` builds the parser from `COMMANDS` and runs a command under `sweeps.cli.errors`, the one
handler that turns every expected failure into one line and an exit code.
"""
from __future__ import annotations

from sweeps.cli.app import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
