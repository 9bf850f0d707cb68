"""The ``astrocurate`` command line: one subcommand per pipeline step and utility.

The guide's scripts under ``scripts/`` call :func:`main` with their subcommand,
so ``python scripts/find_run.py ...`` and ``astrocurate find-run ...`` are the
same code. User errors end with one line on stderr and exit status 1; usage
errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from astrocurate import __version__
from astrocurate.errors import AstrocurateError, InvalidArgumentError, StepInterrupted

log = logging.getLogger("astrocurate")

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand: ``add_arguments`` builds its parser, the function runs it."""

    def register(handler: Handler) -> Handler:
        _COMMANDS[name] = (help_text, add_arguments, handler)
        return handler

    return register


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Return the top-level parser with every registered subcommand.

    Parameters
    ----------
    prog : str, optional
        Program name shown by the subcommand parsers (the guide's script name).
    """
    parser = argparse.ArgumentParser(
        prog="astrocurate",
        description="Curate balanced image sets for self-supervised learning from FITS surveys.",
    )
    parser.add_argument("--version", action="version", version=f"astrocurate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        kwargs = {"prog": prog} if prog else {}
        subparser = sub.add_parser(name, help=help_text, description=help_text, **kwargs)
        subparser.add_argument(
            "-q", "--quiet", action="store_true", help="only warnings and errors"
        )
        add_arguments(subparser)
    return parser


def configure_logging(quiet: bool = False) -> None:
    """Send astrocurate's messages to stderr, quieten MLflow's database chatter."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command line and return the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.
    prog : str, optional
        Name to show in messages instead of ``astrocurate COMMAND``.
    """
    parser = build_parser(prog)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    configure_logging(args.quiet)
    name = prog or f"astrocurate {args.command}"
    try:
        return _COMMANDS[args.command][2](args)
    except AstrocurateError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except (StepInterrupted, KeyboardInterrupt) as exc:
        print(f"{name}: {exc or 'interrupted'}; rerun the same command to resume", file=sys.stderr)
        return 130


def run_script(command_name: str, script: str) -> None:
    """Entry point of the guide's scripts: run one subcommand and exit with its status."""
    sys.exit(main([command_name, *sys.argv[1:]], prog=script))


# --------------------------------------------------------------------------- find-run


def _find_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-name", required=True, help="step run name, e.g. cutting_out")
    parser.add_argument(
        "--cutout-ids",
        nargs="+",
        metavar="ID",
        help='merge runs whose inputs are exactly these cutout runs: "[A, B]", A,B or A B',
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter filter (repeatable); --KEY VALUE works too, e.g. --window_size 64",
    )
    parser.add_argument(
        "--get-path", action="store_true", help="print the run's output directory, not its ID"
    )
    parser.add_argument(
        "--include-unfinished",
        action="store_true",
        help="also consider runs that are running, failed or killed",
    )
    parser.set_defaults(accepts_extra=True)


@command(
    "find-run",
    "Print the ID (or output directory) of the most recent matching run.",
    _find_run_arguments,
)
def _find_run(args: argparse.Namespace) -> int:
    from astrocurate.lookup import find_run, output_path, parse_run_id_list

    params = dict(_parse_key_values(args.param, "--param"))
    params.update(_parse_extra_filters(args.extra))
    inputs = parse_run_id_list(args.cutout_ids) if args.cutout_ids else None
    record = find_run(
        args.run_name,
        params=params,
        input_run_ids=inputs,
        include_unfinished=args.include_unfinished,
    )
    print(output_path(record) if args.get_path else record.run_id)
    return 0


def _parse_key_values(items: Sequence[str], option: str) -> list[tuple[str, str]]:
    """Parse ``KEY=VALUE`` items."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"{option}: expected KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _parse_extra_filters(extra: Sequence[str]) -> dict[str, str]:
    """Parse free parameter filters ``--KEY VALUE`` or ``--KEY=VALUE``."""
    filters: dict[str, str] = {}
    tokens = list(extra)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or len(token) < 3:
            raise InvalidArgumentError(
                f"unexpected argument {token!r}; filters look like --KEY VALUE"
            )
        key, sep, value = token[2:].partition("=")
        if not sep:
            if not tokens or tokens[0].startswith("--"):
                raise InvalidArgumentError(f"--{key}: expected a value to filter on")
            value = tokens.pop(0)
        filters[key] = value
    return filters
