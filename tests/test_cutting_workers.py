"""Tests of the cutting step's workers (astrocurate.stages.cutting_out: run, cutting)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pandas as pd
import pytest

_ALLOCATE_AND_FREE = """
import ctypes, json
import numpy as np
from astrocurate.stages.cutting_out import cutting

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
if {tuned}:
    cutting.keep_freed_memory()
band = np.ones(1 << 22)  # 32 MiB, as a band read at once
mapped_alone = mallinfo2().hblkhd
del band
print(json.dumps({{"mapped_alone": mapped_alone, "kept_free": mallinfo2().fordblks}}))
"""


def _allocate_and_free(tuned: bool) -> dict:
    """Bytes glibc mapped apart for a 32 MiB array, and kept free after it (a new process)."""
    code = _ALLOCATE_AND_FREE.format(tuned=tuned)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def _glibc_version() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    return tuple(int(part) for part in version.split(".")) if name == "glibc" else ()


@pytest.mark.skipif(
    _glibc_version() < (2, 33), reason="tunes glibc's malloc only (mallinfo2 since glibc 2.33)"
)
def test_a_worker_keeps_the_memory_it_frees_for_reuse():
    plain = _allocate_and_free(tuned=False)
    assert plain["mapped_alone"] >= 32 << 20 > plain["kept_free"]  # mapped, then given back
    tuned = _allocate_and_free(tuned=True)
    assert tuned["mapped_alone"] < 32 << 20 <= tuned["kept_free"]  # from the heap, kept


_CUT_ONE = """
import json, sys
from astrocurate.stages.cutting_out import cutting, companions
from astrocurate.stages.cutting_out.run import CutoutOptions
task = cutting.MosaicTask(0, {image!r}, "m", {run_dir!r}, CutoutOptions(64, store={store!r}),
                          companions.Companions(rms_map={rms!r}))
summary = cutting.cut_mosaic(task)
print(json.dumps([summary["n_kept"], sorted(m for m in ("pandas", "torch") if m in sys.modules)]))
"""


@pytest.mark.parametrize("store", ["virtual", "copy"])
def test_a_worker_cuts_a_mosaic_without_importing_pandas(tmp_path, store):
    # pandas would add a quarter of a second to the start of every worker
    from astrocurate.stages.cutting_out import assembly, cutting
    from astrocurate.stages.cutting_out.run import CutoutOptions
    from astrocurate.synthetic.survey import make_survey

    info = make_survey(tmp_path / "survey", n_mosaics=1, mosaic_size=256, seed=4)
    image = sorted(p for p in (tmp_path / "survey").rglob("*.fits") if ".rms." not in p.name)[0]
    rms = image.with_name("mosaic.rms.fits")
    assert rms.is_file(), info
    run_dir = tmp_path / "run"
    code = _CUT_ONE.format(image=str(image), rms=str(rms), run_dir=str(run_dir), store=store)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    n_kept, heavy = json.loads(done.stdout.splitlines()[-1])
    assert n_kept > 0 and heavy == []
    task = cutting.MosaicTask(0, str(image), "m", str(run_dir), CutoutOptions(64, store=store))
    assembly.assemble(run_dir, [task])
    manifest = pd.read_parquet(run_dir / "manifest.parquet")
    assert len(manifest) == n_kept and (manifest["mosaic"] == "m").all()
    assert manifest["rms_map"].notna().all() and (manifest["store"] == store).all()


def test_a_mosaic_counts_as_cut_only_with_its_rows_and_summary(tmp_path):
    # an earlier version left parts/<n>.parquet beside the summary: that mosaic is cut again
    from astrocurate.stages.cutting_out import cutting
    from astrocurate.stages.cutting_out.run import CutoutOptions
    from astrocurate.synthetic.survey import make_survey

    make_survey(tmp_path / "survey", n_mosaics=1, mosaic_size=128, seed=5)
    image = sorted(p for p in (tmp_path / "survey").rglob("*.fits") if ".rms." not in p.name)[0]
    task = cutting.MosaicTask(0, str(image), "m", str(tmp_path / "run"), CutoutOptions(64))
    assert not cutting.is_cut(task)
    cutting.cut_mosaic(task)
    assert cutting.is_cut(task)
    rows = cutting.rows_path(task)
    rows.rename(rows.with_suffix(".parquet"))
    assert cutting.summary_path(task).is_file() and not cutting.is_cut(task)
