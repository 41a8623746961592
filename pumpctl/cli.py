"""The ``pumpctl`` command line: one sub-command per module in ``pumpctl/commands/``.

Only the module of the command being run is imported (``pumpctl --help`` imports none),
so a command pays only for what it uses. User errors end in one line on stderr and an
exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from pumpctl import __version__
from pumpctl.errors import PumpctlError

#: Modules that add sub-commands; each defines ``register(subparsers) -> None``.
COMMAND_MODULES = (
    "pumpctl.commands.build",
    "pumpctl.commands.setting",
    "pumpctl.commands.trumpet",
    "pumpctl.commands.run",
    "pumpctl.commands.log",
    "pumpctl.commands.diagram",
    "pumpctl.commands.campaign",
    "pumpctl.commands.pump",
    "pumpctl.commands.console",
    "pumpctl.commands.simulate",
    "pumpctl.commands.report",
    "pumpctl.commands.keys",
    "pumpctl.commands.operator",
    "pumpctl.commands.hl7",
)

#: The command list shown by ``pumpctl`` and ``pumpctl --help`` without importing any
#: command module: name -> (one-line help, module). A module in COMMAND_MODULES that is
#: missing here still works; it is imported to list or run its commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("pharmacy: the bag and pump program for a mg/day order", "pumpctl.commands.build"),
    "setting": (
        "biomed: check, sign, install or show drug settings and pump profiles",
        "pumpctl.commands.setting",
    ),
    "pump": ("biomed: one command to a New Era NE-1000 at the bench", "pumpctl.commands.pump"),
    "emulate": ("biomed: serve an NE-1000 emulator on a pty or TCP port", "pumpctl.commands.pump"),
    "console": (
        "nurse: the pump channel screen, alarms and bag changes",
        "pumpctl.commands.console",
    ),
    "run": ("the headless controller, simulated or on a real pump", "pumpctl.commands.run"),
    "log": ("list the events of a run's event log", "pumpctl.commands.log"),
    "simulate": (
        "QA: simulate a scenario, give a verdict, a report and plots",
        "pumpctl.commands.simulate",
    ),
    "campaign": (
        "QA: Monte Carlo campaign over a scenario's distributions",
        "pumpctl.commands.campaign",
    ),
    "trumpet": (
        "QA: flow accuracy (IEC 60601-2-24 trumpet curve) from a balance CSV",
        "pumpctl.commands.trumpet",
    ),
    "diagram": ("print the pump state machine as a mermaid diagram", "pumpctl.commands.diagram"),
    "report": (
        "QA: the report of any event log (simulated or a real pump's run)",
        "pumpctl.commands.report",
    ),
    "keys": ("biomed: generate, trust and list drug-library signing keys", "pumpctl.commands.keys"),
    "operator": (
        "biomed: add, remove and list operators with roles and secrets",
        "pumpctl.commands.operator",
    ),
    "hl7": (
        "integration: IHE PCD orders in, status, events and alarms out (MLLP)",
        "pumpctl.commands.hl7",
    ),
}

DESCRIPTION = (
    "Bedside infusion smart-pump simulator and controller for continuous IV anakinra "
    "(QA and bench rigs only; not a medical device)."
)
EPILOG = (
    "Run 'pumpctl COMMAND --help' for a command's options. Exit codes: 0 done/pass, "
    "1 a scenario expectation failed, 2 bad input, 3 refused, 4 soft limit without an "
    "override reason, 5 the pump did not answer or refused."
)


def _terminal_columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it (``COLUMNS``, the
    terminal, else 80), without importing shutil and the compressors it brings."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout, its width read without importing shutil (argparse makes a
    formatter for every option it adds, so that import was a cost of every command)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog,
            indent_increment,
            max_help_position,
            _terminal_columns() - 2 if width is None else width,
        )


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (no usage dump) on a bad argument."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class _SubParser(_Parser):
    """A sub-command's parser: also takes -v/--verbose and --quiet after the command."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _add_noise_options(self, default=argparse.SUPPRESS)


def _add_noise_options(p: argparse.ArgumentParser, default: object) -> None:
    noise = p.add_mutually_exclusive_group()
    noise.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="also print debugging detail on stderr",
    )
    noise.add_argument(
        "--quiet",
        action="store_true",
        default=default,
        help="print only results, warnings and errors (no progress or file notes)",
    )


#: Commands that print their results and never log (nor does anything they import), so
#: they skip importing and configuring ``logging`` (a few ms of every call).
_PRINT_ONLY = frozenset({"build", "diagram", "keys", "log", "operator", "report", "setting"})


def configure_logging(verbosity: int) -> None:
    """The ``pumpctl`` logger on stderr: -1 quiet (warnings), 0 info, 1+ debug.

    Informational lines are printed as they are; warnings and errors say so.
    """
    import logging  # here, not at the top: ``pumpctl --help`` never gets this far

    class _Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                return f"pumpctl: {record.levelname.lower()}: {text}"
            return text

    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("pumpctl")
    for h in list(logger.handlers):
        if getattr(h, "_pumpctl", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler._pumpctl = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _base_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:  # type: ignore[type-arg]
    parser = _Parser(
        prog="pumpctl",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"pumpctl {__version__}")
    _add_noise_options(parser, default=False)
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        title="commands",
        parser_class=_SubParser,
        prog="pumpctl",  # given: argparse would otherwise format a usage line to find it
    )
    return parser, sub


def _modules_for(command: str | None) -> list[str]:
    """The modules to import: the command's own, or every module not in COMMANDS."""
    known = {module for _help, module in COMMANDS.values()}
    extra = [m for m in COMMAND_MODULES if m not in known]
    if command in COMMANDS:
        return [COMMANDS[command][1]]
    return extra


def make_parser(command: str | None = "*", *, listing: bool = True) -> argparse.ArgumentParser:
    """The argument parser. ``command="*"`` (default) registers every sub-command;
    ``None`` only lists them (nothing imported); a name registers that command only, and
    with ``listing`` the others as names with their help line (for help and errors)."""
    parser, sub = _base_parser()
    if command == "*":
        modules = list(dict.fromkeys([*COMMAND_MODULES, *(m for _h, m in COMMANDS.values())]))
    else:
        modules = _modules_for(command)
    for name in modules:
        importlib.import_module(name).register(sub)
    registered = set(sub.choices)
    if command != "*" and (listing or command not in registered):
        sub._parser_class = _Parser  # names for the list only: no options of their own
        for name, (text, _module) in COMMANDS.items():
            if name not in registered:
                sub.add_parser(name, help=text, add_help=False)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The first word that is not a top-level option: the sub-command asked for."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, turn known errors into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    # The other commands' names are only needed to list them: for help asked before the
    # command, or for an unknown command (building them costs ~10 ms, a third of --help).
    before = argv[: argv.index(command)] if command in argv else argv
    parser = make_parser(command, listing=bool({"-h", "--help"} & set(before)))
    if command is None and not argv:
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad option (one line, exit 2), --help or --version (0)
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    if getattr(args, "func", None) is None:  # "pumpctl -v" with no command
        parser.print_help(sys.stderr)
        return 2
    if "logging" in sys.modules or args.command not in _PRINT_ONLY:
        configure_logging(1 if args.verbose else -1 if args.quiet else 0)
    try:
        return int(args.func(args) or 0)
    except PumpctlError as exc:
        print(f"pumpctl {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"pumpctl {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
