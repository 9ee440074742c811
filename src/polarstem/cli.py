"""The ``polarstem`` command. Each subcommand lives beside the code it drives.

Subcommand modules expose ``register(subparsers)``, which adds a parser whose ``func`` takes the
parsed arguments and returns an exit status. User errors (:class:`PolarstemError`) print one line
and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import PolarstemError

#: Modules that contribute subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = [
    "polarstem.commands.data",  # info, virtual
    "polarstem.commands.simulate",  # simulate
    "polarstem.commands.models",  # models, train, evaluate
    "polarstem.commands.classify",  # classify, view
    "polarstem.commands.benchmark",  # benchmark
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polarstem", description="Polarization mapping from 4D-STEM data.")
    parser.add_argument("--version", action="version", version=f"polarstem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that part of the tool is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PolarstemError as exc:
        print(f"polarstem {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"polarstem {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
