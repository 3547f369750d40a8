"""Placeholder: being written (see the project's issues)."""

from __future__ import annotations

import argparse


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register this module's subcommand on the ``earlytom-eval`` parser."""
