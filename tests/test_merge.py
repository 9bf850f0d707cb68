"""The merge stage: one manifest over cutout runs, references not copies, sky de-duplication."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from astrocurate import cli, tracking
from astrocurate.io.cutout_store import MANIFEST, MANIFEST_COLUMNS, CutoutReader
from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
from astrocurate.stages.merge_cutouts.run import MERGED_TYPES, STEP, merge_cutouts
from astrocurate.synthetic.survey import make_survey

SIZES = (8, 12)
OVERLAP = 0.5
STRIDES = {8: 4, 12: 6}


@pytest.fixture(scope="module")
def module_store(tracking_db: str, tmp_path_factory: pytest.TempPathFactory):
    """An MLflow experiment shared by the runs this module makes once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracking_db)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", f"test-merge-{uuid.uuid4().hex[:12]}")
        yield tmp_path_factory.mktemp("merge")


@pytest.fixture(scope="module")
def cut(module_store: Path) -> dict[str, object]:
    """Two overlapping mosaics cut at two window sizes (copied) and once virtually."""
    info = make_survey(
        module_store / "survey", n_mosaics=2, mosaic_size=160, overlap_fraction=0.5, seed=5
    )
    out = module_store / "out"
    runs = {
        w: make_cutouts(info.output_dir, out, CutoutOptions(w, OVERLAP), workers=1) for w in SIZES
    }
    runs["virtual"] = make_cutouts(
        info.output_dir, out, CutoutOptions(8, OVERLAP, store="virtual"), workers=1
    )
    return {"survey": info, **{str(k): v for k, v in runs.items()}}


def _manifest(run) -> pd.DataFrame:
    return pd.read_parquet(run.output_dir / MANIFEST)


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _separation_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angular distance between every row of a (n, 3) and of b (m, 3), shape (n, m)."""
    return np.degrees(np.arccos(np.clip(a @ b.T, -1.0, 1.0)))


@pytest.fixture(scope="module")
def merged(cut) -> dict[str, object]:
    """Merges of the two copied runs, with and without sky de-duplication."""
    ids = [cut["8"].run_id, cut["12"].run_id]
    dedup = merge_cutouts(ids)
    plain = merge_cutouts(ids, dedup_sky=False)
    return {"dedup": dedup, "plain": plain, "ids": ids}


# --------------------------------------------------------------------------- the manifest


def test_global_ids_and_provenance(cut, merged) -> None:
    run = merged["plain"]
    table = _manifest(run)
    sources = {r.run_id: _manifest(r) for r in (cut["8"], cut["12"])}
    assert table["cutout_id"].tolist() == list(range(len(table)))
    assert len(table) == sum(len(m) for m in sources.values())
    assert set(MANIFEST_COLUMNS) | {"source_run_id", "source_cutout_id"} <= set(table.columns)
    # deterministic order: by window size, then run ID, then source row
    assert table["window_size"].is_monotonic_increasing
    for run_id, source in sources.items():
        rows = table[table["source_run_id"] == run_id]
        assert rows["source_cutout_id"].tolist() == source["cutout_id"].tolist()
        for column in ("mosaic", "mosaic_path", "window_size", "x0", "y0", "ra", "dec", "mean"):
            np.testing.assert_array_equal(rows[column].to_numpy(), source[column].to_numpy())
        record = tracking.get_run(run_id)
        expected = [str(record.output_dir / f) for f in source["array_file"]]
        assert rows["array_file"].tolist() == expected
    record = tracking.get_run(run.run_id)
    assert record.status == "FINISHED" and record.name == STEP
    assert sorted(record.input_run_ids) == sorted(merged["ids"])


@pytest.mark.parametrize("inputs", ["two-runs", "one-run", "virtual"])
def test_manifest_schema(cut, merged, inputs) -> None:
    if inputs == "two-runs":
        run = merged["plain"]
    else:
        run = merge_cutouts([cut["8" if inputs == "one-run" else "virtual"].run_id])
    schema = pq.read_schema(run.output_dir / MANIFEST)
    expected = ["cutout_id", "source_run_id", "source_cutout_id", *MANIFEST_COLUMNS[1:]]
    assert schema.names == expected
    assert {n: schema.field(n).type for n in schema.names} == MERGED_TYPES


def test_pixels_are_referenced_not_copied(cut, merged) -> None:
    run = merged["plain"]
    assert not list(run.output_dir.rglob("*.npy"))
    table = _manifest(run)
    reader = CutoutReader.from_directory(run.output_dir)
    sources = {r.run_id: CutoutReader.from_directory(r.output_dir) for r in (cut["8"], cut["12"])}
    picks = np.random.default_rng(1).choice(len(table), 40, replace=False)
    for i in picks:
        row = table.iloc[i]
        expected = sources[row["source_run_id"]][int(row["source_cutout_id"])]
        np.testing.assert_array_equal(reader[int(i)], expected)
        assert reader[int(i)].shape == (row["window_size"],) * 2


def test_order_of_ids_does_not_matter(cut, merged) -> None:
    ids = merged["ids"]
    again = merge_cutouts(ids[::-1])
    assert again.run_id == merged["dedup"].run_id and again.reused
    forced = merge_cutouts(ids[::-1], force=True)
    assert forced.run_id != merged["dedup"].run_id
    pd.testing.assert_frame_equal(_manifest(forced), _manifest(merged["dedup"]))


def test_output_path(cut, merged, tmp_path) -> None:
    assert merged["plain"].output_dir.parent.parent == cut["8"].output_dir.parent.parent
    run = merge_cutouts(merged["ids"], output_path=tmp_path / "elsewhere")
    assert run.output_dir == (tmp_path / "elsewhere" / STEP / run.run_id).resolve()
    assert run.run_id != merged["dedup"].run_id
    pd.testing.assert_frame_equal(_manifest(run), _manifest(merged["dedup"]))


def test_reader_on_a_merge_of_copied_and_virtual_runs(cut) -> None:
    run = merge_cutouts([cut["virtual"].run_id, cut["12"].run_id], dedup_sky=False)
    table = _manifest(run)
    assert set(table["store"]) == {"copy", "virtual"}
    reader = CutoutReader.from_directory(run.output_dir)
    virtual = CutoutReader.from_directory(cut["virtual"].output_dir)
    copied8 = CutoutReader.from_directory(cut["8"].output_dir)
    for i in np.flatnonzero(table["store"].to_numpy() == "virtual")[::7]:
        source_row = int(table["source_cutout_id"].iloc[i])
        np.testing.assert_array_equal(reader[int(i)], virtual[source_row])
        np.testing.assert_array_equal(reader[int(i)], copied8[source_row])  # same windows
    copied = np.flatnonzero(table["store"].to_numpy() == "copy")
    assert len(copied) == len(_manifest(cut["12"]))
    assert reader.read(copied[:5]).shape == (5, 12, 12)


# --------------------------------------------------------------------------- sky de-duplication


def _radius_deg(table: pd.DataFrame, size: int) -> float:
    return 0.5 * STRIDES[size] * float(table["pixel_scale_arcsec"].median()) / 3600


def _centre_distance(table: pd.DataFrame, survey) -> np.ndarray:
    """Angular distance of each cutout from the centre of its own mosaic (degrees)."""
    centres = dict(zip(map(str, survey.mosaic_paths), survey.mosaic_centres, strict=True))
    ra0 = np.array([centres[p][0] for p in table["mosaic_path"]])
    dec0 = np.array([centres[p][1] for p in table["mosaic_path"]])
    a = _unit(table["ra"].to_numpy(), table["dec"].to_numpy())
    b = _unit(ra0, dec0)
    return np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", a, b), -1, 1)))


def _key(table: pd.DataFrame) -> pd.Series:
    return table["source_run_id"].astype(str) + ":" + table["source_cutout_id"].astype(str)


@pytest.mark.parametrize("size", SIZES, ids=[f"w{w}" for w in SIZES])
def test_no_two_kept_cutouts_show_the_same_sky(cut, merged, size) -> None:
    kept = _manifest(merged["dedup"])
    kept = kept[kept["window_size"] == size]
    radius = _radius_deg(kept, size)
    by_mosaic = [g for _, g in kept.groupby("mosaic_path")]
    assert len(by_mosaic) == 2
    a, b = (_unit(g["ra"].to_numpy(), g["dec"].to_numpy()) for g in by_mosaic)
    assert _separation_deg(a, b).min() > radius


@pytest.mark.parametrize("size", SIZES, ids=[f"w{w}" for w in SIZES])
def test_every_dropped_cutout_is_covered_by_a_better_one(cut, merged, size) -> None:
    survey = cut["survey"]
    everything = _manifest(merged["plain"])
    everything = everything[everything["window_size"] == size]
    kept = _manifest(merged["dedup"])
    kept = kept[kept["window_size"] == size]
    dropped = everything[~_key(everything).isin(set(_key(kept)))]
    assert len(dropped) > 10  # the mosaics do overlap
    assert len(kept) + len(dropped) == len(everything)
    radius = _radius_deg(everything, size)
    separation = _separation_deg(
        _unit(dropped["ra"].to_numpy(), dropped["dec"].to_numpy()),
        _unit(kept["ra"].to_numpy(), kept["dec"].to_numpy()),
    )
    other = dropped["mosaic_path"].to_numpy()[:, None] != kept["mosaic_path"].to_numpy()[None, :]
    covering = (separation <= radius * (1 + 1e-9)) & other
    assert covering.any(axis=1).all(), "a dropped cutout's sky is in no kept cutout"
    # the rule: the kept cutout lies nearer the centre of its own mosaic
    d_dropped = _centre_distance(dropped, survey)
    d_kept = _centre_distance(kept, survey)
    for i in range(len(dropped)):
        assert d_kept[covering[i]].min() <= d_dropped[i]


def test_dedup_count_is_logged(merged) -> None:
    n_plain = len(_manifest(merged["plain"]))
    n_dedup = len(_manifest(merged["dedup"]))
    assert n_dedup < n_plain
    metrics = tracking.client().get_run(merged["dedup"].run_id).data.metrics
    assert metrics["n_sky_duplicates_dropped"] == n_plain - n_dedup
    assert metrics["n_cutouts"] == n_dedup
    plain = tracking.client().get_run(merged["plain"].run_id).data.metrics
    assert plain["n_sky_duplicates_dropped"] == 0
    assert tracking.get_run(merged["dedup"].run_id).params["dedup_sky"] == "True"
    assert tracking.get_run(merged["plain"].run_id).params["dedup_sky"] == "False"


def test_window_sizes_are_not_deduplicated_against_each_other(cut, merged) -> None:
    both = _manifest(merged["dedup"])
    for size in SIZES:
        alone = _manifest(merge_cutouts([cut[str(size)].run_id]))
        assert set(_key(both[both["window_size"] == size])) == set(_key(alone))


def test_dedup_is_off_by_default_without_sky_positions(store, capsys) -> None:
    (store / "survey").mkdir()
    for i in range(2):
        data = np.random.default_rng(i).normal(size=(24, 24)).astype(np.float32)
        fits.PrimaryHDU(data).writeto(store / "survey" / f"m{i}.fits")  # no WCS
    cut = make_cutouts(store / "survey", store / "out", CutoutOptions(8), workers=1)
    run = merge_cutouts([cut.run_id])
    assert tracking.get_run(run.run_id).params["dedup_sky"] == "False"
    assert len(_manifest(run)) == len(_manifest(cut))


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def finished_cut(store: Path) -> str:
    info = make_survey(store / "survey", n_mosaics=1, mosaic_size=64, seed=2)
    return make_cutouts(info.output_dir, store / "out", CutoutOptions(16), workers=1).run_id


def _merge_cli(capsys, *ids: str) -> tuple[int, str]:
    status = cli.main(["merge", "--cutouts-id", *ids])
    return status, capsys.readouterr().err


def _assert_one_line_error(err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("astrocurate merge: error: ") and fragment in lines[0], lines[0]


def _no_merge_runs() -> bool:
    return tracking.find_runs(STEP, include_unfinished=True) == []


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("0123456789abcdef0123456789abcdef", "no run"),
        ("CUTOUTS_RUN_ID_64", "not an MLflow run ID"),
        ("twice", "more than once"),
    ],
    ids=["unknown-id", "placeholder", "same-id-twice"],
)
def test_refuses_bad_ids(store, finished_cut, capsys, bad, fragment) -> None:
    ids = [finished_cut, finished_cut] if bad == "twice" else [finished_cut, bad]
    status, err = _merge_cli(capsys, *ids)
    assert status == 1
    _assert_one_line_error(err, fragment)
    assert _no_merge_runs()


def test_refuses_cutout_runs_that_hold_no_cutouts(store, capsys, caplog) -> None:
    """Mosaics smaller than the window: the cutting run finishes empty and says so loudly;
    merging it is refused before a merge run exists."""
    info = make_survey(store / "survey", n_mosaics=2, mosaic_size=32, seed=2)
    with caplog.at_level("WARNING", logger="astrocurate"):
        empty = make_cutouts(info.output_dir, store / "out", CutoutOptions(64), workers=1)
    assert "no cutouts at all" in caplog.text
    status, err = _merge_cli(capsys, empty.run_id)
    assert status == 1
    _assert_one_line_error(err, "hold no cutouts at all")
    assert _no_merge_runs()


def test_refuses_a_run_of_another_step(store, finished_cut, capsys) -> None:
    assert cli.main(["merge", "--cutouts-id", finished_cut]) == 0
    merge_id = capsys.readouterr().out.strip()
    status, err = _merge_cli(capsys, merge_id)
    assert status == 1
    _assert_one_line_error(err, "'merge_cutouts' run")


@pytest.mark.parametrize("state", ["running", "failed"])
def test_refuses_an_unfinished_cutout_run(store, finished_cut, capsys, state) -> None:
    if state == "running":
        with tracking.tracked_step("cutting_out", {"window_size": 99}) as run:
            status, err = _merge_cli(capsys, finished_cut, run.run_id)
            (run.output_dir / MANIFEST).write_bytes(b"")
    else:
        with pytest.raises(RuntimeError), tracking.tracked_step("cutting_out", {"w": 1}) as run:
            raise RuntimeError("disk full")
        status, err = _merge_cli(capsys, finished_cut, run.run_id)
    assert status == 1
    _assert_one_line_error(err, "not FINISHED")
    assert _no_merge_runs()


# --------------------------------------------------------------------------- the rule, by hand


@pytest.mark.parametrize(
    ("n", "pairs", "rank", "dropped"),
    [
        (3, [(0, 1), (1, 2)], [1, 0, 2], [True, False, True]),
        (3, [(0, 1), (1, 2)], [0, 1, 2], [False, True, False]),
        (4, [(0, 1), (0, 2), (0, 3)], [2, 0, 1, 3], [True, False, False, False]),
        (5, [(0, 1), (1, 2), (2, 3), (3, 4)], [4, 3, 2, 1, 0], [False, True, False, True, False]),
        (2, [(1, 0)], [1, 0], [True, False]),
    ],
    ids=["chain-middle-best", "chain-end-best", "star", "long-chain", "reversed-pair"],
)
def test_greedy_suppression_by_hand(n, pairs, rank, dropped) -> None:
    from astrocurate.stages.merge_cutouts.run import _greedy_suppression

    got = _greedy_suppression(np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(rank))
    assert got.tolist() == dropped and len(got) == n


def test_sky_duplicates_mask_by_hand() -> None:
    from astrocurate.stages.merge_cutouts.run import sky_duplicates_mask

    # mosaic a centred at ra 10, mosaic b at ra 10.1 (dec 0); 1"/px, stride 36 px -> 18"
    cutouts = pd.DataFrame(
        {
            "window_size": [72, 72, 72, 72, 72, 48],
            "mosaic_path": ["a", "b", "a", "b", "b", "a"],
            "x0": [0, 0, 1, 1, 2, 0],
            "y0": [0, 0, 0, 0, 0, 0],
            "ra": [10.06, 10.0601, 10.03, 10.0302, 10.2, 10.06],
            "dec": [0.0, 0.0, 0.0, 0.0, np.nan, 0.0],
            "pixel_scale_arcsec": 1.0,
        }
    )
    mosaics = pd.DataFrame({"mosaic_path": ["a", "b"], "centre_ra": [10.0, 10.1], "centre_dec": 0})
    keep = sky_duplicates_mask(cutouts, mosaics, {72: 36, 48: 24})
    # row 0 (a, nearer b's centre) loses to row 1; row 3 (b, nearer a's) loses to row 2;
    # no sky: kept; another window size: kept
    assert keep.tolist() == [False, True, True, False, True, True]
    apart = cutouts.assign(ra=[10.06, 10.0651, 10.03, 10.0302, 10.2, 10.06])  # 18.4" apart
    assert sky_duplicates_mask(apart, mosaics, {72: 36, 48: 24}).tolist()[:2] == [True, True]


@pytest.mark.parametrize("lost", ["manifest.parquet", "mosaics.parquet"])
def test_refuses_a_cutout_run_with_missing_outputs(store, finished_cut, capsys, lost) -> None:
    (tracking.get_run(finished_cut).output_dir / lost).unlink()
    status, err = _merge_cli(capsys, finished_cut)
    assert status == 1
    _assert_one_line_error(err, lost)
    assert _no_merge_runs()


def _layout(rng: np.random.Generator, n_mosaics: int = 9) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Overlapping mosaics on a 3x3 grid of pointings, each with a jittered grid of cutouts."""
    centres_ra = 30.0 + 0.02 * (np.arange(n_mosaics) % 3)
    centres_dec = 40.0 + 0.02 * (np.arange(n_mosaics) // 3)
    rows = []
    for m in range(n_mosaics):
        offsets = np.arange(-12, 13) * 0.0012
        dra, ddec = (a.ravel() for a in np.meshgrid(offsets, offsets))
        jitter = rng.normal(0, 2e-5, (2, dra.size))
        rows.append(
            pd.DataFrame(
                {
                    "window_size": 40,
                    "mosaic_path": f"m{m}",
                    "x0": np.tile(np.arange(25), 25) * 20,
                    "y0": np.repeat(np.arange(25), 25) * 20,
                    "ra": centres_ra[m] + (dra + jitter[0]) / np.cos(np.radians(40)),
                    "dec": centres_dec[m] + ddec + jitter[1],
                    "pixel_scale_arcsec": 0.216,
                }
            )
        )
    mosaics = pd.DataFrame(
        {"mosaic_path": [f"m{m}" for m in range(n_mosaics)], "centre_ra": centres_ra}
    ).assign(centre_dec=centres_dec)
    return pd.concat(rows, ignore_index=True), mosaics


def test_prefilter_misses_no_same_sky_pair(monkeypatch) -> None:
    """The mask equals the one found without pre-filtering (every cutout a candidate)."""
    import pyarrow as pa

    from astrocurate.stages.merge_cutouts import run as merge
    from astrocurate.stages.merge_cutouts.run import sky_duplicates_mask

    cutouts, mosaics = _layout(np.random.default_rng(3))
    keep = sky_duplicates_mask(cutouts, mosaics, {40: 20})
    assert 0 < (~keep).sum() < len(keep) // 2
    as_arrow = sky_duplicates_mask(pa.Table.from_pandas(cutouts), mosaics, {40: 20})
    np.testing.assert_array_equal(as_arrow, keep)
    filtered = merge._near_another_mosaic
    monkeypatch.setattr(merge, "_near_another_mosaic", lambda sky, r: np.ones(len(sky.codes), bool))
    np.testing.assert_array_equal(sky_duplicates_mask(cutouts, mosaics, {40: 20}), keep)
    monkeypatch.setattr(merge, "_near_another_mosaic", filtered)
    unknown = mosaics.assign(centre_ra=mosaics["centre_ra"].where(mosaics.index != 4))
    for mask in (keep, sky_duplicates_mask(cutouts, unknown, {40: 20})):
        kept = cutouts[mask]
        points = _unit(kept["ra"].to_numpy(), kept["dec"].to_numpy())
        codes = pd.factorize(kept["mosaic_path"])[0]
        assert not len(_brute_force_pairs(points, codes, np.radians(10 * 0.216 / 3600)))


def test_prefilter_skips_cutouts_far_from_other_mosaics() -> None:
    from astrocurate.stages.merge_cutouts import run as merge

    cutouts, mosaics = _layout(np.random.default_rng(4), n_mosaics=3)  # one row of 3
    codes, _ = merge._path_codes(cutouts["mosaic_path"])
    centre = merge._unit_vectors(mosaics["centre_ra"].to_numpy(), mosaics["centre_dec"].to_numpy())
    sky = merge._Sky(
        merge._unit_vectors(cutouts["ra"].to_numpy(), cutouts["dec"].to_numpy()),
        codes,
        centre,
        cutouts["x0"].to_numpy(),
        cutouts["y0"].to_numpy(),
    )
    radius = np.radians(0.5 * 20 * 0.216 / 3600)
    candidate = merge._near_another_mosaic(sky, radius)
    assert 0 < candidate.sum() < len(candidate)
    pairs = _brute_force_pairs(sky.points, codes, radius)
    assert candidate[pairs.ravel()].all()


def _brute_force_pairs(points: np.ndarray, codes: np.ndarray, radius: float) -> np.ndarray:
    """Every pair of cutouts of different mosaics within ``radius`` (radians)."""
    cosine = np.clip(points @ points.T, -1, 1)
    close = (np.arccos(cosine) <= radius) & (codes[:, None] != codes[None, :])
    return np.argwhere(np.triu(close, 1))
