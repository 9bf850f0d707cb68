"""``verify``: hash a run's outputs again and check its lineage."""

from __future__ import annotations

import argparse
import sys

from astrocurate.cli.base import command, positive_int


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run to verify")
    parser.add_argument(
        "--no-parents",
        action="store_true",
        help="skip the lineage check (input runs exist, are FINISHED, outputs unchanged)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also fail on changes under logs/ and report/ (written after a run, e.g. by SLURM)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=None, help="files hashed in parallel"
    )


class _ByteProgress:
    """Progress of a hash on stderr (a terminal only), thread-safe, at most 5 updates/s."""

    def __init__(self, label: str) -> None:
        import threading

        self.label, self.total, self.done, self.shown = label, 0, 0, 0.0
        self.lock = threading.Lock()

    def start(self, total: int) -> None:
        self.total = total

    def __call__(self, n: int) -> None:
        import time

        with self.lock:
            self.done += n
            now = time.monotonic()
            if now - self.shown < 0.2:
                return
            self.shown = now
            share = 100 * self.done / self.total if self.total else 100.0
            print(
                f"\r{self.label}: {self.done / 2**30:.2f} of {self.total / 2**30:.2f} GiB "
                f"hashed ({share:.0f}%)",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


@command(
    "verify",
    "Hash a run's outputs again, compare with its record, check its lineage (exit 1 on a "
    "difference).",
    _verify_arguments,
)
def _verify(args: argparse.Namespace) -> int:
    from astrocurate.tracking.lookup import verify_run

    progress = _ByteProgress(f"verify {args.run_id}") if sys.stderr.isatty() else None
    try:
        report = verify_run(
            args.run_id,
            parents=not args.no_parents,
            workers=args.workers,
            progress=progress,
            on_total=progress.start if progress else None,
        )
    finally:
        if progress:
            progress.close()
    for finding in report.findings:
        print(finding.line())
    print(report.summary(args.strict))
    return 1 if report.problems(args.strict) else 0
