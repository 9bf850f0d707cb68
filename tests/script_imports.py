"""Run one of the guide's scripts in a fresh interpreter and list the heavy modules it loaded."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

_CODE = """\
import runpy, sys
sys.argv = [{script!r}, *{argv!r}]
try:
    runpy.run_path({script!r}, run_name='__main__')
except SystemExit as exc:
    assert not exc.code, exc.code
print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def run_script(
    name: str, argv: Sequence[str], heavy: Sequence[str], cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``scripts/<name>`` with ``argv``; its last stderr line lists ``heavy`` modules loaded.

    The script must exit with status 0 (checked inside the child, reported on stderr).
    """
    script = str(SCRIPTS / name)
    code = _CODE.format(script=script, argv=list(argv), heavy=tuple(heavy))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, check=False
    )


def heavy_loaded(done: subprocess.CompletedProcess) -> str:
    """The list of heavy modules the child printed last (``"[]"`` for none)."""
    return done.stderr.strip().splitlines()[-1]
