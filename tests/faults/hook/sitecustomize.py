"""Fault hook of the fault-injection suite, loaded by Python at start-up (``sitecustomize``).

Inactive unless ``ASTROCURATE_FAULT_HOOK`` holds a JSON spec: the process then signals
itself (SIGKILL by default) at a chosen file event, a deterministic point of the step::

    {"pattern": "*/progress/*.done", "nth": 2, "when": "after", "signal": "SIGKILL"}

The event is the ``nth`` call of ``os.replace`` (every step makes its files appear by
renaming a temporary file) whose destination matches ``pattern`` (fnmatch on the path):
``before`` the rename (the temporary file is complete, the final name absent) or
``after`` it (the file is in place, what follows it not done).

Only the first Python process of the command arms the hook (``run.sh`` execs Python, so
that is the step itself); its child processes inherit the environment and stay unarmed.
With ``"in_worker": true`` every Python process installs it but only a process forked from
one (a pool worker forked by a fork server) fires: each worker counts its own renames.
The tests put this directory first on ``PYTHONPATH``; any other ``sitecustomize`` on
the path is still imported.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import sys

_SPEC_ENV = "ASTROCURATE_FAULT_HOOK"
_ARMED_ENV = "ASTROCURATE_FAULT_ARMED"


def _install(spec: dict) -> None:
    pattern = spec["pattern"]
    nth = int(spec.get("nth", 1))
    when = spec.get("when", "after")
    signum = getattr(signal, spec.get("signal", "SIGKILL"))
    armed_pid = os.getpid()
    in_worker = bool(spec.get("in_worker"))
    real_replace = os.replace
    seen = [0]

    def fire(dst: str) -> None:
        sys.stderr.write(
            f"fault hook: {signal.Signals(signum).name} {when} os.replace #{nth} -> {dst}\n"
        )
        sys.stderr.flush()
        os.kill(os.getpid(), signum)

    def replace(src, dst, *args, **kwargs):
        target = os.fsdecode(dst)
        forked = os.getpid() != armed_pid
        if forked != in_worker or not fnmatch.fnmatch(target, pattern):
            return real_replace(src, dst, *args, **kwargs)
        seen[0] += 1
        if seen[0] != nth:
            return real_replace(src, dst, *args, **kwargs)
        if when == "before":
            fire(target)
        result = real_replace(src, dst, *args, **kwargs)
        if when == "after":
            fire(target)
        return result

    os.replace = replace


def _chain() -> None:
    """Import the next ``sitecustomize`` on the path, if there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    module = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        import sitecustomize  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if module is not None:
            sys.modules["sitecustomize"] = module


_spec = os.environ.get(_SPEC_ENV)
if _spec and (not os.environ.get(_ARMED_ENV) or json.loads(_spec).get("in_worker")):
    os.environ[_ARMED_ENV] = str(os.getpid())
    _install(json.loads(_spec))
_chain()
