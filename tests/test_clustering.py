"""The clustering stage (guide steps 4a and 4b): config, run lifecycle, run.sh, SLURM, resume.

A tiny fake feature run (Gaussian blobs) stands in for step 3. Subprocesses are few (each
costs ~10 s of imports here): run.sh from inside its directory as the guide does, and a
run.sh killed with SIGKILL then rerun.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from astrocurate.algorithms.kmeans.hierarchical import HierarchicalKMeans
from astrocurate.cli import main
from astrocurate.errors import InvalidArgumentError, InvalidRunError, RunNotFoundError
from astrocurate.launch import SlurmOptions, absolute_tracking_uri
from astrocurate.stages.clustering import run as clustering
from astrocurate.stages.clustering.run import (
    PREPARED,
    ClusteringConfig,
    RequeueRequested,
    StopRequest,
    compute_levels,
    load_clustering,
    load_config,
    parse_overrides,
    prepare_clustering,
    require_clustering_run,
    run_clustering,
    valid_keys,
)
from astrocurate.tracking import client, get_run, tracked_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "clusters"
GOLDEN = Path(__file__).resolve().parent / "golden" / "clustering"

SMALL = {
    "n_clusters": [24, 6],
    "n_iters": [8, 8],
    "n_resampling_steps": [3, 2],
    "sample_size": [5, 3],
    "sampling_strategy": ["r", "c"],
    "checkpoint_period": 600,
    "ngpus_per_node": 0,
    "device": "cpu",
}


def blobs(n: int = 600, d: int = 16, centres: int = 12, seed: int = 0) -> np.ndarray:
    """Gaussian blobs of very different sizes (a long tail), float32."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(centres, d))
    weights = 1.0 / np.arange(1, centres + 1)
    which = rng.choice(centres, size=n, p=weights / weights.sum())
    return (means[which] + rng.normal(size=(n, d))).astype(np.float32)


def fake_feature_run(X: np.ndarray, status: str = "FINISHED") -> str:  # noqa: N803
    """Record a feature_extraction run holding ``X`` (what step 3 writes)."""
    with tracked_step("feature_extraction", {"rows": len(X)}, force=True) as run:
        np.save(run.output_dir / "features.npy", X)
        sidecar = {"model": "fake", "n_rows": len(X), "dim": X.shape[1], "dtype": "float32"}
        (run.output_dir / "features.json").write_text(json.dumps(sidecar))
    if status != "FINISHED":
        client().set_terminated(run.run_id, status=status)
    return run.run_id


@pytest.fixture
def features(store: Path) -> tuple[str, np.ndarray]:
    X = blobs()  # noqa: N806
    return fake_feature_run(X), X


def config(**changes) -> ClusteringConfig:
    return ClusteringConfig.from_mapping({**SMALL, **changes})


def estimator(cfg: ClusteringConfig) -> HierarchicalKMeans:
    return HierarchicalKMeans(
        list(cfg.n_clusters),
        n_iters=list(cfg.n_iters),
        n_resampling_steps=list(cfg.n_resampling_steps),
        sample_size=list(cfg.sample_size),
        sampling_strategy=list(cfg.sampling_strategy),
        n_splits=list(cfg.n_splits),
        init=cfg.init,
        tol=cfg.tol,
        dtype=cfg.dtype,
        random_state=cfg.seed,
    )


def level_arrays(directory: Path) -> dict[str, np.ndarray]:
    """Every array of every complete level of an experiment directory."""
    return {
        f"{path.parent.name}/{path.name}": np.load(path)
        for level in sorted(directory.glob("level_*/level.json"))
        for path in sorted(level.parent.glob("*.npy"))
    }


def assert_same_levels(directory: Path, reference: Path) -> None:
    """Every level array of two experiment directories is bit for bit the same."""
    a, b = level_arrays(directory), level_arrays(reference)
    assert sorted(a) == sorted(b) and a
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_cluster": [4]}, r"'n_cluster' is not valid \(did you mean 'n_clusters'\?\); valid "),
        ({"n_iters": [5, 5, 5]}, r"n_iters=\[5, 5, 5\] has 3 entries but n_levels=2"),
        ({"n_levels": 3}, r"n_clusters=\[24, 6\] has 2 entries but n_levels=3"),
        ({"n_clusters": [24, 30]}, r"level 2 asks for 30 clusters but has only 24 inputs"),
        ({"sampling_strategy": ["r", "x"]}, r"level 2 has 'x'; valid strategies: 'r'"),
        ({"n_clusters": [0, 0]}, r"n_clusters: level 1 has 0; it must be an integer >= 1"),
        ({"n_iters": -1}, r"n_iters: level 1 has -1; it must be an integer >= 0"),
        ({"sample_size": [0, 3]}, r"sample_size: level 1 has 0; it must be an integer >= 1"),
        ({"sample_size": None}, r"level 1 has n_resampling_steps=3 but no sample_size"),
        ({"n_splits": [2, 1]}, r"level 1 has n_splits=2 and n_resampling_steps=3"),
        ({"dtype": "float16"}, r"dtype='float16' is not valid; valid dtypes: float32, float64"),
        ({"high_precision": "float16"}, r"high_precision='float16' is not valid; valid dtypes"),
        ({"n_iters": True}, r"n_iters: level 1 has True; it must be an integer"),
        ({"checkpoint_period": -5}, r"checkpoint_period=-5 must be an integer >= 0"),
        ({"nnodes": 0}, r"nnodes: level 1 has 0; it must be an integer >= 1"),
        ({"ngpus_per_node": [1, 1, 1]}, r"ngpus_per_node=\[1, 1, 1\] has 3 entries but n_levels=2"),
        ({"device": "tpu"}, r"device='tpu' is not valid; use auto, cpu, cuda or cuda:N"),
        ({"ngpus_per_node": 4, "nprocs_per_node": 2}, r"one process per GPU; set nprocs"),
        ({"nprocs_per_node": 0}, r"nprocs_per_node: level 1 has 0; it must be null or an"),
        ({"ngpus_per_node": [0, 2], "nprocs_per_node": 3}, r"=3, ngpus_per_node=2 \(level 2\)"),
        ({"n_clusters": "many"}, r"n_clusters: level 1 has 'many'"),
        ({"matmul_precision": "bf16"}, r"matmul_precision='bf16' is not valid; .*highest, tf32"),
    ],
    ids=[
        "unknown-key",
        "list-too-long",
        "n_levels-mismatch",
        "level-2-more-than-level-1",
        "bad-strategy",
        "zero-clusters",
        "negative-iters",
        "zero-sample-size",
        "resampling-without-sample-size",
        "splits-with-resampling",
        "bad-dtype",
        "bad-high-precision",
        "bool-is-not-int",
        "negative-period",
        "zero-nodes",
        "gpus-list-too-long",
        "bad-device",
        "processes-not-gpus",
        "zero-processes",
        "level-2-processes-not-gpus",
        "string-clusters",
        "bad-matmul-precision",
    ],
)
def test_config_errors_name_key_value_and_what_is_valid(changes, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        config(**changes)
    assert "\n" not in str(info.value)


def test_unknown_key_lists_every_valid_key() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        config(bogus=1)
    assert str(info.value).endswith("valid keys: " + ", ".join(valid_keys()))
    assert {"n_levels", "checkpoint_period", "slurm_partition", "ncpus_per_gpu"} <= set(
        valid_keys()
    )


def test_scalars_are_broadcast_and_n_levels_defaults_to_the_list() -> None:
    cfg = config(n_iters=7, sampling_strategy="c")
    assert (cfg.n_levels, cfg.n_iters, cfg.sampling_strategy) == (2, (7, 7), ("c", "c"))
    assert ClusteringConfig.from_mapping({"n_clusters": 5}).n_clusters == (5,)


def test_overrides_are_yaml_and_validated_like_the_file(tmp_path: Path) -> None:
    overrides = parse_overrides(["n_iters=5", "n_clusters=[64,8]", "subset_indices_path=null"])
    assert overrides == {"n_iters": 5, "n_clusters": [64, 8], "subset_indices_path": None}
    cfg = load_config(CONFIGS / "demo_2lvl_64_8.yaml", parse_overrides(["n_clusters=[32,4]"]))
    assert cfg.n_clusters == (32, 4)
    with pytest.raises(InvalidArgumentError, match=r"'n_iter' is not valid"):
        load_config(CONFIGS / "demo_2lvl_64_8.yaml", parse_overrides(["n_iter=5"]))
    with pytest.raises(InvalidArgumentError, match=r"has 3 entries but n_levels=2"):
        load_config(CONFIGS / "demo_2lvl_64_8.yaml", parse_overrides(["n_clusters=[8,4,2]"]))
    with pytest.raises(InvalidArgumentError, match=r"overrides look like key=value"):
        parse_overrides(["--bogus"])
    with pytest.raises(InvalidArgumentError, match=r"no such file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("n_clusters: [1, 2\n")
    with pytest.raises(InvalidArgumentError, match=r"not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid_and_commented(path: Path) -> None:
    cfg = load_config(path)
    assert path.read_text().startswith("# ")
    assert set(cfg.as_dict()) == set(valid_keys())
    name_numbers = [int(x) for x in re.findall(r"_(\d+)(?=_|$)", path.stem)]
    if path.stem.startswith("demo_"):  # the originals: tests/test_original_configs.py
        assert list(cfg.n_clusters) == name_numbers
        assert max(cfg.n_clusters) <= 100
        assert cfg.n_levels == int(re.search(r"(\d)lvl", path.stem).group(1))


# ----------------------------------------------------------------------------- computing


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"sampling_strategy": "c", "dtype": "float64"},
        {"n_resampling_steps": 1, "n_splits": [3, 1], "n_clusters": [10, 12]},
    ],
    ids=["resampling-r-c", "resampling-c-float64", "splits"],
)
def test_stage_gives_what_the_estimator_gives(tmp_path: Path, changes) -> None:
    X = blobs()  # noqa: N806
    cfg = config(**changes)
    levels = compute_levels(X, cfg, tmp_path)
    reference = estimator(cfg).fit(X)
    for i, result in enumerate(levels):
        assert np.array_equal(result.centroids, reference.centroids_[i])
        assert np.array_equal(result.labels, reference.labels_[i])
        assert np.array_equal(result.members, reference.members_[i])
        point_labels = np.load(tmp_path / f"level_{i + 1}" / "point_labels.npy")
        assert np.array_equal(point_labels, reference.point_labels(i))
    assert not (tmp_path / "checkpoints").exists()


class StopAfter(StopRequest):
    """Asks to stop at the ``n``-th checkpoint question (as SIGTERM would); counts them."""

    def __init__(self, n: int | None = None, name: str = "SIGTERM") -> None:
        super().__init__()
        self.asked, self.n, self.name = 0, n, name

    @property
    def requested(self) -> bool:
        self.asked += 1
        if self.n is not None and self.asked >= self.n and self.signal_name is None:
            self.signal_name = self.name
        return self.signal_name is not None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """An uninterrupted run with checkpoints at every step, and how many it asked about."""
    counter, directory = StopAfter(), tmp_path_factory.mktemp("straight")
    compute_levels(blobs(), config(checkpoint_period=0), directory, stop=counter)
    return directory, counter.asked


@pytest.mark.parametrize("where", [0.02, 0.5, 0.9], ids=["kmeans++", "level-1", "level-2"])
def test_stop_saves_a_checkpoint_and_resume_is_identical(tmp_path, uninterrupted, where) -> None:
    X, cfg = blobs(), config(checkpoint_period=0)  # noqa: N806
    straight, asked = uninterrupted
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        compute_levels(X, cfg, tmp_path, stop=StopAfter(int(where * asked)))
    assert list((tmp_path / "checkpoints").rglob("*.npz"))
    assert (tmp_path / "level_1" / "level.json").exists() == (where > 0.7)
    compute_levels(X, cfg, tmp_path)
    assert_same_levels(tmp_path, straight)


def test_stop_inside_the_splits_resumes_identically(tmp_path: Path) -> None:
    X = blobs()  # noqa: N806
    cfg = config(n_resampling_steps=1, n_splits=[3, 1], n_clusters=[10, 12], checkpoint_period=0)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        compute_levels(X, cfg, tmp_path, stop=StopAfter(20))  # 10 k-means++ + 8 Lloyd + 2
    assert (tmp_path / "checkpoints" / "level_1" / "split.npz").is_file()
    levels = compute_levels(X, cfg, tmp_path)
    reference = estimator(cfg).fit(X)
    for i, result in enumerate(levels):
        assert np.array_equal(result.centroids, reference.centroids_[i])
        assert np.array_equal(result.labels, reference.labels_[i])


def test_signals_ask_to_stop_at_the_next_checkpoint() -> None:
    stop = StopRequest()
    with stop.handling_signals():
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.signal_name == "SIGUSR1"
        with pytest.raises(RequeueRequested):
            stop.check()
        stop.signal_name = None
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            stop.check()
        with pytest.raises(KeyboardInterrupt):  # a second SIGTERM stops at once
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("under_slurm", [True, False], ids=["requeued", "not-under-slurm"])
def test_slurm_time_limit_warning_requeues_the_job(
    store, features, tmp_path, monkeypatch, under_slurm
) -> None:
    features_id, _ = features
    prepared = prepare_clustering(features_id, config(checkpoint_period=0))
    if under_slurm:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/scontrol"\n')
        (bin_dir / "scontrol").chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setattr(clustering, "StopRequest", lambda: StopAfter(30, "SIGUSR1"))
    expected = RequeueRequested if under_slurm else KeyboardInterrupt
    with pytest.raises(expected):
        run_clustering(prepared.directory, level=1)
    record = get_run(prepared.run_id)
    if under_slurm:
        assert (tmp_path / "scontrol").read_text() == "requeue 4242\n"
        assert record.status == "RUNNING" and record.tags["astrocurate.slurm_job_id"] == "4242"
        assert record.tags["astrocurate.progress"] == clustering.REQUEUED
    else:
        assert record.status == "KILLED"
    monkeypatch.setattr(clustering, "StopRequest", StopRequest)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert run_clustering(prepared.directory).status == "FINISHED"


# ----------------------------------------------------------------------------- 4a and 4b


def prepare_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["clustering-prepare", *argv], prog="4_clustering.py")
    out, err = capsys.readouterr()
    return status, out, err


def test_guide_4a_then_run_sh_from_inside_the_directory(store, features, capsys, tmp_path):
    features_id, X = features  # noqa: N806
    weird = tmp_path / "my data $(touch pwned) 'q' \"dq\""
    status, out, err = prepare_cli(
        capsys,
        "--features-id",
        features_id,
        "--config_file",
        str(CONFIGS / "demo_2lvl_64_8.yaml"),
        "--output_path",
        str(weird),
        "n_clusters=[24,6]",
        "n_iters=8",
    )
    assert status == 0, err
    directory = Path(out.splitlines()[-1])
    assert directory.parent == weird / "clustering" and (directory / "config.yaml").is_file()
    run_sh = directory / "run.sh"
    assert run_sh.stat().st_mode & stat.S_IXUSR
    run_id = directory.name
    assert get_run(run_id).status == PREPARED
    assert load_config(directory / "config.yaml").n_clusters == (24, 6)

    # find_run finds the prepared run (the guide asks for its path before run.sh)
    assert main(["find-run", "--run-name", "clustering", "--get-path"]) == 0
    assert capsys.readouterr().out.strip() == str(directory)
    with pytest.raises(InvalidRunError, match=r"prepared .* has not been run; run it: cd "):
        require_clustering_run(run_id)

    # 4b exactly as the guide: cd into the directory, ./run.sh (no tracking env needed)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ASTROCURATE"))}
    result = subprocess.run(
        ["./run.sh"], cwd=directory, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == run_id
    assert not (Path.cwd() / "pwned").exists() and not (directory / "pwned").exists()

    record = require_clustering_run(run_id)
    assert record.finished and len(record.tags["astrocurate.content_hash"]) == 64
    check_outputs(directory, X)
    check_metrics_and_plots(run_id)
    assert not (directory / "checkpoints").exists()
    assert "level 2" in (directory / "logs" / "clustering.log").read_text()

    # both steps again: nothing to do, same run
    assert run_clustering(directory).status == "FINISHED"
    again = prepare_clustering(features_id, load_config(directory / "config.yaml"))
    assert (again.run_id, again.reused, again.status) == (run_id, True, "FINISHED")


def check_outputs(directory: Path, X: np.ndarray) -> None:  # noqa: N803
    out = load_clustering(directory)
    n_inputs = len(X)
    previous = None
    for level in out.levels:
        k = len(level["centroids"])
        offsets, members, distances = level["offsets"], level["members"], level["distances"]
        assert level["centroids"].shape == (k, X.shape[1])
        assert offsets[0] == 0 and offsets[-1] == n_inputs and np.all(np.diff(offsets) >= 0)
        assert np.array_equal(np.sort(members), np.arange(n_inputs))  # a partition
        for j in range(k):
            mine = members[offsets[j] : offsets[j + 1]]
            assert np.all(level["labels"][mine] == j)
            assert np.all(np.diff(distances[offsets[j] : offsets[j + 1]]) >= 0)
        point_labels = level["point_labels"]
        if previous is None:
            assert np.array_equal(point_labels, level["labels"])
        else:  # nesting: a point's level-l cluster is its level-(l-1) cluster's cluster
            assert np.array_equal(point_labels, level["labels"][previous])
        previous, n_inputs = point_labels, k
    assert np.array_equal(out.input_indices, np.arange(len(X)))


def check_metrics_and_plots(run_id: str) -> None:
    run = client().get_run(run_id)
    for level in (1, 2):
        for name in ("inertia", "n_empty", "size_min", "size_median", "size_max"):
            assert f"level_{level}/{name}" in run.data.metrics
        assert 0 < run.data.metrics[f"level_{level}/size_entropy"] <= 1
    plots = [a.path for a in client().list_artifacts(run_id, "plots")]
    assert plots == ["plots/level_1_cluster_sizes.png", "plots/level_2_cluster_sizes.png"]
    names = {a.path for a in client().list_artifacts(run_id)}
    assert {"outputs.json", "metadata.json", "config.yaml"} <= names


@pytest.mark.full  # tests/faults kills this step at seeded points too
def test_run_sh_killed_with_sigkill_resumes_to_identical_arrays(store, tmp_path, capsys):
    X = blobs(n=1500, centres=20)  # noqa: N806
    features_id = fake_feature_run(X)
    cfg = config(
        n_clusters=[30, 6], n_iters=[20, 8], n_resampling_steps=[3, 2], checkpoint_period=0
    )
    prepared = prepare_clustering(features_id, cfg)
    run_sh = [str(prepared.directory / "run.sh")]
    level_1 = prepared.directory / "checkpoints" / "level_1"
    process = subprocess.Popen(run_sh, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:  # kill inside k-means run 2 of level 1: a finished run and a live state exist
        deadline = time.monotonic() + 240
        while not (level_1 / "step_0.npz").is_file() or not list(level_1.glob("kmeans_[12].npz")):
            assert process.poll() is None, process.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert get_run(prepared.run_id).status == "RUNNING"
    assert not (prepared.directory / "level_1" / "level.json").exists()

    resumed = subprocess.run(run_sh, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert get_run(prepared.run_id).status == "FINISHED"
    compute_levels(X, cfg, tmp_path / "reference")
    assert_same_levels(prepared.directory, tmp_path / "reference")


def test_one_level_per_process_like_the_slurm_jobs(store, features, capsys) -> None:
    features_id, X = features  # noqa: N806
    prepared = prepare_clustering(features_id, config())
    first = run_clustering(prepared.directory, level=1)
    assert (first.status, first.levels_done) == ("RUNNING", 1)
    assert not (prepared.directory / "level_2").exists()
    assert "level_1/inertia" in client().get_run(prepared.run_id).data.metrics
    assert main(["find-run", "--run-name", "clustering", "--get-path"]) == 0
    assert capsys.readouterr().out.strip() == str(prepared.directory)
    with pytest.raises(InvalidRunError, match=r"is still running .* run it again to resume"):
        require_clustering_run(prepared.run_id)
    assert run_clustering(prepared.directory, level=2).status == "FINISHED"
    reference = estimator(config()).fit(X)
    out = load_clustering(prepared.directory)
    assert np.array_equal(out.levels[1]["point_labels"], reference.point_labels(1))


def test_subset_indices(store, features, tmp_path) -> None:
    features_id, X = features  # noqa: N806
    subset = np.arange(1, len(X), 2)
    np.save(tmp_path / "subset.npy", subset[::-1])  # order does not matter
    cfg = config(subset_indices_path=str(tmp_path / "subset.npy"))
    prepared = prepare_clustering(features_id, cfg)
    run_clustering(prepared.directory)
    out = load_clustering(prepared.directory)
    assert np.array_equal(out.input_indices, subset)
    assert np.all(out.levels[0]["point_labels"][::2] == -1)
    reference = estimator(cfg).fit(X[subset])
    assert np.array_equal(out.levels[0]["point_labels"][subset], reference.point_labels(0))
    assert np.array_equal(out.levels[1]["labels"], reference.labels_[1])

    small = config(n_clusters=[400, 6], subset_indices_path=str(tmp_path / "subset.npy"))
    with pytest.raises(
        InvalidArgumentError, match=r"level 1 asks for 400 clusters but has only 300"
    ):
        prepare_clustering(features_id, small)
    np.save(tmp_path / "bad.npy", np.array([1, 1, 2]))
    with pytest.raises(InvalidArgumentError, match=r"1 repeated row indices"):
        prepare_clustering(features_id, config(subset_indices_path=str(tmp_path / "bad.npy")))
    np.save(tmp_path / "out.npy", np.array([5, 600]))
    with pytest.raises(InvalidArgumentError, match=r"must lie in \[0, 600\)"):
        prepare_clustering(features_id, config(subset_indices_path=str(tmp_path / "out.npy")))


def test_more_clusters_than_feature_rows_gives_both_numbers(store, features, capsys) -> None:
    features_id, _ = features
    status, out, err = prepare_cli(
        capsys,
        "--features-id",
        features_id,
        "--config_file",
        str(CONFIGS / "A_3M_3lvl_60k_4k_300.yaml"),
    )
    assert status == 1 and out == ""
    assert "level 1 asks for 60000 clusters but has only 600 inputs (feature rows of run" in err
    assert err.count("\n") == 1


def test_refuses_runs_that_are_not_finished_feature_runs(store, capsys) -> None:
    with tracked_step("merge_cutouts", {"x": 1}) as merge:
        (merge.output_dir / "manifest.parquet").write_text("")
    failed = fake_feature_run(blobs(), status="FAILED")
    demo = str(CONFIGS / "demo_2lvl_64_8.yaml")
    cases = [
        (merge.run_id, r"is a 'merge_cutouts' run, expected a 'feature_extraction' run"),
        (failed, r"feature_extraction run \w+ is FAILED, not FINISHED"),
        ("FEATURE_RUN_ID", r"write \$FEATURE_RUN_ID"),
    ]
    for run_id, message in cases:
        status, _, err = prepare_cli(capsys, "--features-id", run_id, "--config_file", demo)
        assert status == 1 and re.search(message, err), err
    with pytest.raises(RunNotFoundError):
        prepare_clustering("0" * 32, config())


def test_editing_config_yaml_between_4a_and_4b(store, features) -> None:
    features_id, _ = features
    prepared = prepare_clustering(features_id, config())
    path = prepared.directory / "config.yaml"
    text = path.read_text()
    path.write_text(text.replace("n_iters: [8, 8]", "n_iters: [9, 9]"))
    with pytest.raises(InvalidArgumentError, match=r"n_iters changed since the run was prepared"):
        run_clustering(prepared.directory)
    path.write_text(text.replace("checkpoint_period: 600", "checkpoint_period: 30"))
    assert run_clustering(prepared.directory).status == "FINISHED"


def test_preparing_twice_reuses_the_prepared_run(store, features) -> None:
    features_id, _ = features
    first = prepare_clustering(features_id, config())
    second = prepare_clustering(features_id, config(checkpoint_period=5))  # resources only
    assert (second.run_id, second.reused) == (first.run_id, True)
    assert load_config(first.directory / "config.yaml").checkpoint_period == 5
    other = prepare_clustering(features_id, config(seed=1))
    forced = prepare_clustering(features_id, config(), force=True)
    assert len({first.run_id, other.run_id, forced.run_id}) == 3


# ----------------------------------------------------------------------------- SLURM


def normalise(text: str, prepared) -> str:
    import astrocurate

    replacements = {
        str(prepared.directory): "<DIR>",
        prepared.run_id: "<RUN_ID>",
        prepared.run_id[:8]: "<RUN8>",
        sys.executable: "<PYTHON>",
        str(Path(astrocurate.__file__).resolve().parents[1]): "<SRC>",
        os.environ["MLFLOW_TRACKING_URI"]: "<TRACKING_URI>",
        os.environ["MLFLOW_EXPERIMENT_NAME"]: "<EXPERIMENT>",
    }
    for old, new in replacements.items():
        text = text.replace(shlex.quote(old), new).replace(old, new)
    return text


def test_slurm_scripts_match_the_golden_files(store, features) -> None:
    features_id, _ = features
    slurm = SlurmOptions(account="astro", partition="gpu", time="01:00:00", qos="normal")
    cfg = load_config(CONFIGS / "demo_3lvl_100_20_5.yaml", {"ngpus_per_node": 1})
    prepared = prepare_clustering(features_id, cfg, slurm=slurm)
    generated = {"run.sh": prepared.directory / "run.sh"}
    for level in (1, 2, 3):
        generated[f"level_{level}.sbatch"] = prepared.directory / "slurm" / f"level_{level}.sbatch"
    for name, path in generated.items():
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, name
        text = normalise(path.read_text(), prepared)
        golden = GOLDEN / name
        if os.environ.get("UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{name} differs from {golden} (UPDATE_GOLDEN=1)"


def fake_slurm(bin_dir: Path, log: Path) -> dict[str, str]:
    """``sbatch`` that records its arguments and answers job IDs; ``squeue`` that sees none."""
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$PWD|$*" >> "{log}"\n'
        f'n=$(wc -l < "{log}")\n'
        'echo "$((1000 + n));cluster"\n'
    )
    (bin_dir / "squeue").write_text("#!/usr/bin/env bash\nexit 0\n")
    for tool in ("sbatch", "squeue"):
        (bin_dir / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_slurm_run_sh_submits_a_dependency_chain(store, features, tmp_path) -> None:
    features_id, _ = features
    weird = tmp_path / "a b $(touch pwned) 'c'"
    cfg = load_config(CONFIGS / "demo_3lvl_100_20_5.yaml")
    prepared = prepare_clustering(
        features_id, cfg, slurm=SlurmOptions(partition="cpu"), output_path=weird
    )
    log = tmp_path / "sbatch.log"
    env = fake_slurm(tmp_path / "bin", log)
    result = subprocess.run(
        ["./run.sh", "--no-wait"],
        cwd=prepared.directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1001", "1002", "1003"]
    calls = [line.split("|") for line in log.read_text().splitlines()]
    assert [cwd for cwd, _ in calls] == [str(prepared.directory)] * 3
    assert [args for _, args in calls] == [
        "--parsable slurm/level_1.sbatch",
        "--parsable --dependency=afterok:1001 slurm/level_2.sbatch",
        "--parsable --dependency=afterok:1002 slurm/level_3.sbatch",
    ]
    sbatch = (prepared.directory / "slurm" / "level_3.sbatch").read_text()
    assert "#SBATCH --partition=cpu\n" in sbatch and "#SBATCH --requeue\n" in sbatch
    assert "--gpus-per-node" not in sbatch  # the demo config is CPU only
    assert not list(tmp_path.rglob("pwned"))
    bad = subprocess.run(["./run.sh", "--bogus"], cwd=prepared.directory, env=env)
    assert bad.returncode == 2
    if shutil.which("sbatch") is None:  # no SLURM here: a clear message, not a stack of errors
        here = subprocess.run(["./run.sh"], cwd=prepared.directory, capture_output=True, text=True)
        assert here.returncode == 1 and "run.sh: sbatch not found" in here.stderr


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", "sqlite:////work dir/mlflow.db"),
        ("sqlite:///db/m.db?timeout=20", "sqlite:////work dir/db/m.db?timeout=20"),
        ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("mlruns", "/work dir/mlruns"),
        ("./mlruns", "/work dir/mlruns"),
        ("file:mlruns", "file:///work dir/mlruns"),
        ("file:///abs/mlruns", "file:///abs/mlruns"),
        ("/abs/mlruns", "/abs/mlruns"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("databricks", "databricks"),
    ],
)
def test_run_scripts_get_an_absolute_tracking_store(uri, expected) -> None:
    """run.sh and SLURM jobs start elsewhere: a relative local store would be another store."""
    assert absolute_tracking_uri(uri, Path("/work dir")) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SlurmOptions(account="a b"), r"--slurm_account='a b': expected a SLURM name"),
        (SlurmOptions(time="1h"), r"--slurm_time='1h': expected a SLURM time limit"),
        (SlurmOptions(qos="$(x)"), r"--slurm_qos="),
    ],
    ids=["account-with-space", "bad-time", "qos-injection"],
)
def test_slurm_options_are_checked(options, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        options.validate()
