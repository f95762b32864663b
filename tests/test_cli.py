"""The command line explains itself."""

from __future__ import annotations

import argparse

from repq.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from _subparsers(sub)


def test_every_option_of_every_command_has_help():
    commands = dict(_subparsers(build_parser()))
    assert {"prepare-data", "train", "evaluate", "precision", "tracking-init", "report"} <= set(
        commands
    )
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, f"repq {name}: {action.option_strings or action.dest} has no help"
