"""Exception types raised by astrocurate.

Every error a user can cause derives from :class:`AstrocurateError`, so the
command line can turn it into one clear line and exit status 1. Each type also
subclasses the built-in exception it refines, so library users can catch
``ValueError`` or ``LookupError`` as usual.
"""

from __future__ import annotations


class AstrocurateError(Exception):
    """Base class of the errors that astrocurate reports to its users."""


class RunNotFoundError(AstrocurateError, LookupError):
    """No tracked run matches an ID or a set of filters."""


class InvalidRunError(AstrocurateError, ValueError):
    """A run exists but cannot be used here (wrong step, unfinished, outputs missing)."""


class InvalidArgumentError(AstrocurateError, ValueError):
    """A parameter given by the user is out of range or malformed."""


class WorkerDiedError(AstrocurateError, RuntimeError):
    """A worker process ended abruptly (out of memory, a signal); rerunning resumes."""

    @classmethod
    def doing(cls, what: str) -> WorkerDiedError:
        """Return the one-line error for a worker that died ``what`` ("cutting the mosaics")."""
        return cls(
            f"a worker process {what} ended abruptly (killed by the system, e.g. when memory "
            "ran out, or by a signal); what finished is kept: rerun the same command to "
            "resume, with fewer --workers if memory is short"
        )


class StepInterrupted(KeyboardInterrupt):
    """A step received SIGTERM or SIGINT; its run is marked KILLED."""
