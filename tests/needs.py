"""What some tests need from the machine, and what they do when it is missing.

:func:`unavailable` skips a test whose tool (SLURM's daemons, Chromium) is missing, and
fails it instead when ``CI`` is set: CI installs every tool (``.ci/run``), so a skip there
would hide a gap. :data:`WITHOUT_DAC_OVERRIDE` runs a command as root without the
capabilities that let root ignore permission bits, so that the permission cases run in
CI (which runs as root) instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest

#: Prefix of a command that runs it without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (util-linux).
WITHOUT_DAC_OVERRIDE = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
    "--",
]


def unavailable(message: str) -> NoReturn:
    """Skip with ``message``; with ``CI`` set, fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: failing instead of skipping)", pytrace=False)
    pytest.skip(message)


def permission_bits_deny() -> bool:
    """Whether a directory without permissions is unreadable to this process (not root)."""
    with tempfile.TemporaryDirectory() as parent:
        probe = Path(parent) / "probe"
        probe.mkdir(mode=0)
        try:
            os.listdir(probe)
        except PermissionError:
            return True
        finally:
            probe.chmod(0o700)
    return False


def dropping_dac_override_works() -> bool:
    """Whether :data:`WITHOUT_DAC_OVERRIDE` makes permission bits deny here (root only)."""
    if shutil.which("setpriv") is None:
        return False
    with tempfile.TemporaryDirectory() as parent:
        probe = Path(parent) / "probe"
        probe.mkdir(mode=0)
        try:
            result = subprocess.run(
                [*WITHOUT_DAC_OVERRIDE, "ls", str(probe)], capture_output=True, timeout=30
            )
        finally:
            probe.chmod(0o700)
    return result.returncode != 0
