"""`gait-stream`: one console script, one subcommand per module in services/commands/.

A command module defines `register(subparsers)`, which adds its subparser and calls
`set_defaults(func=run)`, and `run(args) -> int`. Modules are found at start-up, so adding a
command never touches this file. A command module that fails to import is reported on stderr
and left out; the other commands still work.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import traceback

import services.commands

__all__ = ["build_parser", "main"]


def _command_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(services.commands.__path__) if m.name[0] != "_"]


def _register(sub: argparse._SubParsersAction, names: list[str]) -> None:  # type: ignore[type-arg]
    for mod in names:
        name = f"services.commands.{mod}"
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            print(f"gait-stream: command module {name} failed to import: {exc}", file=sys.stderr)
            if os.environ.get("GAIT_STREAM_DEBUG"):
                traceback.print_exc()
            continue
        register = getattr(module, "register", None)
        if callable(register):
            register(sub)


def _requested(argv: list[str]) -> str | None:
    """The subcommand named on the command line (skipping the global options), if any."""
    it = iter(argv)
    for arg in it:
        if arg == "--log-level":
            next(it, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """All commands; or, when `argv` names one whose module is named like it, just that one
    (some command modules take seconds to import, and `start` should not wait for them)."""
    parser = argparse.ArgumentParser(
        prog="gait-stream",
        description="A real-time gait and motion lab: IMUs and cameras in, joint angles out.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("GAIT_STREAM_LOG", "WARNING"),
        help="logging level (DEBUG, INFO, WARNING, ERROR); default WARNING",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _command_modules()
    wanted = _requested(argv or [])
    guess = wanted.replace("-", "_") if wanted else None
    if guess in modules:
        _register(sub, [guess])
        if wanted in sub.choices:
            return parser
    _register(sub, [m for m in modules if m not in sub.choices and m != guess])
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
