"""The ``astrocurate`` command line: one subcommand per pipeline step and utility.

The guide's scripts under ``scripts/`` call :func:`main` with their subcommand,
so ``python scripts/find_run.py ...`` and ``astrocurate find-run ...`` are the
same code. User errors end with one line on stderr and exit status 1; usage
errors exit 2 (argparse).

One module per group of subcommands registers them (:func:`~astrocurate.cli.base.
command`), in the order ``--help`` lists them: :mod:`~astrocurate.cli.find_run`,
:mod:`~astrocurate.cli.cutouts` (cutouts, merge), :mod:`~astrocurate.cli.sources`
(find-sources, optional), :mod:`~astrocurate.cli.synthetic`
(make-survey, demo), :mod:`~astrocurate.cli.features` (features, features-finish,
backbones), :mod:`~astrocurate.cli.clustering`, :mod:`~astrocurate.cli.sampling` (sample,
report), :mod:`~astrocurate.cli.evaluation` (evaluate), :mod:`~astrocurate.cli.verify`.
``python -m astrocurate.cli`` runs :func:`main`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from astrocurate import __version__
from astrocurate.cli.base import COMMANDS, command
from astrocurate.errors import AstrocurateError, StepInterrupted

#: The subcommand modules, in the order ``astrocurate --help`` lists their subcommands.
GROUPS = (
    "find_run",
    "cutouts",
    "sources",
    "synthetic",
    "features",
    "clustering",
    "sampling",
    "evaluation",
    "verify",
)
for _group in GROUPS:  # each module registers its subcommands with @command
    importlib.import_module(f"astrocurate.cli.{_group}")

__all__ = ["build_parser", "command", "configure_logging", "main", "run_script"]


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
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        kwargs = {"prog": prog} if prog else {}
        subparser = sub.add_parser(name, help=help_text, description=help_text, **kwargs)
        subparser.add_argument(
            "-q", "--quiet", action="store_true", help="only warnings and errors"
        )
        add_arguments(subparser)
    return parser


def configure_logging(quiet: bool = False) -> None:
    """Send astrocurate's messages to stderr, quieten MLflow's database chatter.

    MLflow prints "View run ... at: URL" on stdout when a run ends on a tracking server;
    stdout is the run ID alone (``RUN_ID=$(python scripts/merge.py ...)``), so it is off.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
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
        return COMMANDS[args.command][2](args)
    except AstrocurateError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a vanished or unwritable file: no traceback
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        print(f"{name}: error: {_out_of_memory_message(exc)}", file=sys.stderr)
        return 1
    except (StepInterrupted, KeyboardInterrupt) as exc:
        print(f"{name}: {exc or 'interrupted'}; rerun the same command to resume", file=sys.stderr)
        return 130


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out: the host's, or a GPU's (torch.OutOfMemoryError)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def _out_of_memory_message(exc: BaseException) -> str:
    """One line: which memory ran out, and what to do."""
    where = "GPU memory" if type(exc).__name__ == "OutOfMemoryError" else "memory"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"out of {where} ({detail[:200]}); what finished is kept: rerun the same command "
        "to resume, with a smaller --batch-size or fewer --workers where the step has them"
    )


def run_script(command_name: str, script: str) -> None:
    """Entry point of the guide's scripts: run one subcommand and exit with its status."""
    sys.exit(main([command_name, *sys.argv[1:]], prog=script))
