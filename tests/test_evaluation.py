"""Step 6, evaluation: pretrain on the curated and the random sample, score on labelled cutouts.

Runs the real step (lightly SimCLR on a timm ResNet-18, sky-grouped probes) on the small
session pipeline (tests/curation_pipeline.py) with a budget of a few dozen images, so
that every path runs in seconds: the arms, the truth-catalogue labels and a user's label
file, weights trained elsewhere, reuse, the report, and the refusals.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from astrocurate.algorithms.backbones.weights import WeightsError
from astrocurate.algorithms.ssl import build_encoder, encoder_checkpoint
from astrocurate.cli import main
from astrocurate.errors import InvalidArgumentError, InvalidRunError
from astrocurate.io.atomic import save_torch
from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample
from astrocurate.stages.evaluation.outputs import (
    ARMS_DIR,
    ENCODER,
    INFO,
    LABELS,
    METRICS,
    SCORES,
    TIMING,
)
from astrocurate.stages.evaluation.results import summarise
from astrocurate.stages.evaluation.run import EvaluationOptions, evaluate
from astrocurate.tracking import get_run
from script_imports import heavy_loaded, run_script

pytestmark = pytest.mark.xdist_group("curation")

TINY = EvaluationOptions(
    seeds=2,
    images_seen=48,
    batch_size=16,
    image_size=32,
    max_per_category=25,
    folds=2,
    knn_k=5,
    device="cpu",
)


@pytest.fixture(scope="module")
def sampling_id(curation_pipeline) -> str:
    """A balanced sample of the session pipeline, with its random baseline."""
    run = curated_sample(curation_pipeline.clustering_id, SamplingOptions(60), report=False)
    return run.run_id


@pytest.fixture(scope="module")
def evaluation(sampling_id):
    return evaluate(sampling_id, TINY)


def test_evaluation_scores_both_arms_over_seeds_and_writes_its_report(evaluation):
    out = evaluation.output_dir
    info = json.loads((out / INFO).read_text())
    assert list(info["arms"]) == ["curated", "random"]
    assert info["arms"]["curated"]["cutouts"] == info["arms"]["random"]["cutouts"] == 60
    assert info["labels"]["source"] == "truth catalogue"
    scores = pd.read_parquet(out / SCORES)
    assert sorted(scores["seed"].unique()) == [0, 1]
    assert set(scores["arm"]) == {"curated", "random"}
    metrics = json.loads((out / METRICS).read_text())
    for arm in ("curated", "random"):
        for probe in ("knn", "linear"):
            assert 0.0 <= metrics[f"{arm}_{probe}_balanced_accuracy_mean"] <= 1.0
            assert metrics[f"{arm}_{probe}_balanced_accuracy_std"] >= 0.0
            assert f"{arm}_{probe}_rarest_recall_mean" in metrics
    assert "curated_minus_random_knn_balanced_accuracy" in metrics
    for arm in ("curated", "random"):
        for seed in (0, 1):
            assert (out / ARMS_DIR / arm / f"seed_{seed}" / ENCODER).is_file()
            assert not (out / ARMS_DIR / arm / f"seed_{seed}" / "checkpoint.pt").exists()
    page = (out / "report" / "index.html").read_text()
    assert "Balanced accuracy" in page and "data:image/png;base64," in page


def test_the_same_command_reuses_the_finished_run(sampling_id, evaluation):
    again = evaluate(sampling_id, TINY)
    assert again.reused and again.run_id == evaluation.run_id


def test_a_finished_run_is_reused_whatever_the_precision_and_says_what_it_computed_in(
    sampling_id, evaluation
):
    """Like the device, the precision is not in the run's key; each timing records it."""
    timings = (evaluation.output_dir / ARMS_DIR).rglob(TIMING)
    assert [json.loads(path.read_text())["precision"] for path in timings] == ["fp32"] * 4
    again = evaluate(sampling_id, replace(TINY, precision="bf16"))
    assert again.reused and again.run_id == evaluation.run_id
    with pytest.raises(InvalidArgumentError, match="--precision"):
        evaluate(sampling_id, replace(TINY, precision="fp16"))


def test_an_unfinished_run_is_joined_only_with_the_precision_it_started_with(sampling_id, tmp_path):
    """Encoders in fp32 and in bf16 are not mixed in one run: one line names the flag."""
    first = evaluate(sampling_id, TINY, output_path=tmp_path, shard=(0, 2), report=False)
    other = replace(TINY, precision="bf16")
    with pytest.raises(InvalidArgumentError, match=r"--precision bf16: .* precision=auto"):
        evaluate(sampling_id, other, output_path=tmp_path, shard=(1, 2), report=False)
    done = evaluate(sampling_id, TINY, output_path=tmp_path, shard=(1, 2), report=False)
    assert done.run_id == first.run_id


def test_a_shard_joins_only_where_it_computes_in_the_precision_the_run_started_in(
    sampling_id, tmp_path, monkeypatch
):
    """``--precision bf16`` is fp32 on a CPU without bf16 units: no run mixes the two."""
    from astrocurate.algorithms import precision

    bf16 = replace(TINY, precision="bf16")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    first = evaluate(sampling_id, bf16, output_path=tmp_path, shard=(0, 2), report=False)
    assert get_run(first.run_id).params["computed_precision"] == "bf16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.raises(InvalidArgumentError) as refused:
        evaluate(sampling_id, bf16, output_path=tmp_path, shard=(1, 2), report=False)
    message = str(refused.value)
    assert message.startswith(f"--precision: evaluation run {first.run_id} is unfinished")
    assert "started with computed_precision=bf16, here it would be fp32" in message
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    done = evaluate(sampling_id, bf16, output_path=tmp_path, shard=(1, 2), report=False)
    assert done.run_id == first.run_id and get_run(done.run_id).finished


def test_the_rerun_script_imports_no_torch_sklearn_or_pandas(sampling_id, evaluation):
    """Rerunning the guide's script finds the finished run from its key alone."""
    options = ["--seeds", "2", "--images-seen", "48", "--batch-size", "16", "--image-size", "32"]
    options += ["--max-per-category", "25", "--folds", "2", "--knn-k", "5", "--device", "cpu"]
    done = run_script(
        "evaluate.py",
        ["--sampling-id", sampling_id, *options],
        ("torch", "sklearn", "pandas", "mlflow"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == evaluation.run_id
    assert heavy_loaded(done) == "[]"


def test_seeds_differ_and_arms_are_trained_apart(evaluation):
    out = evaluation.output_dir
    embeddings = {
        (arm, seed): np.load(out / ARMS_DIR / arm / f"seed_{seed}" / "embeddings.npy")
        for arm in ("curated", "random")
        for seed in (0, 1)
    }
    assert not np.array_equal(embeddings["curated", 0], embeddings["curated", 1])
    assert not np.array_equal(embeddings["curated", 0], embeddings["random", 0])
    labels = pd.read_parquet(out / LABELS)
    assert all(len(e) == len(labels) for e in embeddings.values())


def test_weights_trained_elsewhere_are_scored_as_their_own_arm(sampling_id, tmp_path):
    weights = tmp_path / "mine.pt"
    save_torch(weights, encoder_checkpoint(build_encoder("resnet18", seed=3)))
    options = EvaluationOptions(**{**TINY.__dict__, "arms": ()})
    run = evaluate(sampling_id, options, weights=(weights,), report=False)
    metrics = json.loads((run.output_dir / METRICS).read_text())
    assert "weights_mine_knn_balanced_accuracy_mean" in metrics
    assert not any(k.startswith("curated_") for k in metrics)


def test_weights_of_another_architecture_are_refused_in_one_line(sampling_id, tmp_path):
    import torch

    weights = tmp_path / "vit.pt"
    torch.save({"patch_embed.proj.weight": torch.zeros(384, 3, 16, 16)}, weights)
    with pytest.raises(WeightsError, match=r"vit\.pt.*another architecture") as caught:
        evaluate(sampling_id, TINY, weights=(weights,))
    assert "\n" not in str(caught.value)


def test_a_label_file_pointing_at_no_cutout_is_refused(sampling_id, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("mosaic,x0,y0,window_size,categories\nnowhere,0,0,64,['artefact']\n")
    with pytest.raises(InvalidArgumentError, match=r"labels\.csv: none of its 1 labels"):
        evaluate(sampling_id, TINY, labels=labels)


def test_a_user_label_file_is_matched_to_the_cutouts(sampling_id, curation_pipeline, tmp_path):
    manifest = curation_pipeline.manifest
    rows = manifest.iloc[::3]
    labels = tmp_path / "labels.csv"
    names = ["['diffuse', 'little-resolved']", "['sparse', 'point-like']", "['artefact']"]
    table = rows[["mosaic", "x0", "y0", "window_size"]].copy()
    table["categories"] = [names[i % 3] for i in range(len(rows))]
    table.to_csv(labels, index=False)
    options = EvaluationOptions(**{**TINY.__dict__, "arms": ("curated",), "seeds": 1})
    run = evaluate(sampling_id, options, labels=labels, report=False)
    info = json.loads((run.output_dir / INFO).read_text())
    assert info["labels"]["source"] == str(labels)
    assert set(info["labels"]["categories"]) == {
        "diffuse",
        "little-resolved",
        "sparse",
        "point-like",
        "artefact",
    }


def test_a_random_baseline_run_is_refused_as_the_sample_to_evaluate(curation_pipeline):
    baseline = curated_sample(
        curation_pipeline.clustering_id, SamplingOptions(60, baseline="random"), report=False
    )
    with pytest.raises(InvalidRunError, match="--baseline random"):
        evaluate(baseline.run_id, TINY)


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"arms": ("everything",)}, "--arms"),
        ({"method": "dino"}, "--method"),
        ({"seeds": 0}, "--seeds"),
        ({"learning_rate": -1.0}, "--learning-rate"),
        ({"folds": 1}, "--folds"),
    ],
)
def test_bad_options_are_refused_naming_the_option(change, flag):
    with pytest.raises(InvalidArgumentError, match=flag):
        EvaluationOptions(**{**TINY.__dict__, **change}).validate()


def test_loading_pixels_by_window_size_warns_of_nothing(curation_pipeline):
    """The rows of each window size come from pandas as a read-only array; indexing the
    images with it made torch warn that the array is not writable, in every run."""
    import warnings

    from astrocurate.stages.evaluation.labelled import load_pixels

    rows = np.arange(0, len(curation_pipeline.manifest), 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, rms = load_pixels(curation_pipeline.merged.output_dir, rows, 32)
    assert images.shape == (len(rows), 32, 32) and torch.isfinite(rms).all()


def test_summary_flags_curated_ahead_only_beyond_both_spreads():
    rows = []
    for seed, (cur, ran) in enumerate([(0.80, 0.60), (0.82, 0.62), (0.78, 0.58)]):
        for arm, value in (("curated", cur), ("random", ran)):
            rows += [
                {"arm": arm, "seed": seed, "metric": "knn_balanced_accuracy", "value": value},
                {"arm": arm, "seed": seed, "metric": "knn_recall_rare", "value": value - 0.1},
                {"arm": arm, "seed": seed, "metric": "linear_balanced_accuracy", "value": 0.5},
                {"arm": arm, "seed": seed, "metric": "linear_recall_rare", "value": 0.5},
            ]
    metrics = summarise(pd.DataFrame(rows), "rare")
    assert metrics["curated_knn_balanced_accuracy_mean"] == pytest.approx(0.80)
    assert metrics["curated_knn_balanced_accuracy_std"] == pytest.approx(0.02)
    assert metrics["curated_minus_random_knn_rarest_recall"] == pytest.approx(0.20)
    assert metrics["curated_ahead_knn"] == 1.0
    assert metrics["curated_ahead_linear"] == 0.0


def test_the_command_line_prints_the_run_id(sampling_id, evaluation, capsys):
    argv = ["evaluate", "--sampling-id", sampling_id, "--seeds", "2", "--images-seen", "48"]
    argv += ["--batch-size", "16", "--image-size", "32", "--max-per-category", "25"]
    argv += ["--folds", "2", "--knn-k", "5", "--device", "cpu"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == evaluation.run_id


def test_report_command_rewrites_an_evaluation_report(evaluation, capsys):
    page = Path(evaluation.output_dir) / "report" / "index.html"
    page.unlink()
    assert main(["report", evaluation.run_id]) == 0
    assert page.is_file()


@pytest.fixture(scope="module")
def sampling_without_baseline(sampling_id, curation_pipeline) -> str:
    """A sampling run as an older version wrote it: no ``baseline_random.npy``."""
    import shutil

    from astrocurate.tracking import tracked_step

    source = get_run(sampling_id).output_dir
    params = {"copy_of": sampling_id, "without": "baseline"}
    inputs = [curation_pipeline.clustering_id]
    with tracked_step("curated_sampling", params, input_run_ids=inputs, force=True) as run:
        for name in ("selected.npy", "sampling.json", "curated.parquet"):
            shutil.copy(source / name, run.output_dir / name)
    return run.run_id


def _bad_cases(tmp_path: Path, sampling_id: str, without_baseline: str) -> dict[str, tuple]:
    import torch

    nowhere = tmp_path / "nowhere.csv"
    nowhere.write_text("mosaic,x0,y0,window_size,categories\nnowhere,0,0,64,['artefact']\n")
    braces = tmp_path / "braces.csv"
    braces.write_text("cutout_id,categories\n0,{'artefact': 1}\n")
    vit = tmp_path / "vit.pt"
    torch.save({"patch_embed.proj.weight": torch.zeros(384, 3, 16, 16)}, vit)
    return {
        "labels point at no cutout": (["--labels", str(nowhere)], "nowhere.csv"),
        "unknown categories format": (["--labels", str(braces)], "braces.csv"),
        "weights of another architecture": (["--weights", str(vit)], "vit.pt"),
        "no random baseline": (["--sampling-id", without_baseline], "baseline_random.npy"),
        "missing label file": (["--labels", str(tmp_path / "absent.csv")], "absent.csv"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "labels point at no cutout",
        "unknown categories format",
        "weights of another architecture",
        "no random baseline",
        "missing label file",
    ],
)
def test_bad_input_is_one_line_on_stderr_and_records_no_run(
    case, sampling_id, sampling_without_baseline, tmp_path, capsys
):
    from astrocurate.tracking import find_runs

    extra, named = _bad_cases(tmp_path, sampling_id, sampling_without_baseline)[case]
    argv = ["evaluate", "--sampling-id", sampling_id, "--seeds", "1", "--device", "cpu", *extra]
    before = len(find_runs("evaluation", include_unfinished=True))
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and named in err[0], err
    assert len(find_runs("evaluation", include_unfinished=True)) == before


def test_two_shards_compute_the_same_run_as_one_process(sampling_id, evaluation, tmp_path):
    first = evaluate(sampling_id, TINY, output_path=tmp_path, shard=(0, 2))
    assert not (first.output_dir / METRICS).exists()  # shard 1/2 has pairs left to do
    second = evaluate(sampling_id, TINY, output_path=tmp_path, shard=(1, 2))
    assert second.run_id == first.run_id
    from astrocurate.tracking import get_run

    assert get_run(second.run_id).finished
    sharded = json.loads((second.output_dir / METRICS).read_text())
    assert sharded == json.loads((evaluation.output_dir / METRICS).read_text())
    again = evaluate(sampling_id, TINY, output_path=tmp_path, shard=(0, 2))
    assert again.reused


def test_the_pool_arm_draws_what_the_budget_can_see(sampling_id, curation_pipeline):
    options = EvaluationOptions(**{**TINY.__dict__, "arms": ("pool",), "seeds": 1})
    run = evaluate(sampling_id, options, report=False)
    info = json.loads((run.output_dir / INFO).read_text())
    assert info["arms"]["pool"]["cutouts"] == min(len(curation_pipeline.pool), TINY.images_seen)
    assert "pool_knn_balanced_accuracy_mean" in json.loads((run.output_dir / METRICS).read_text())


def test_find_run_finds_the_evaluation(evaluation, capsys):
    root = str(evaluation.output_dir.parent.parent)  # other tests' runs differ in these
    argv = ["find-run", "--run-name", "evaluation", "--get-path", "--arms", "curated,random"]
    assert main([*argv, "--output_path", root]) == 0
    assert Path(capsys.readouterr().out.strip()) == evaluation.output_dir


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_where_there_is_none_is_one_line_and_records_no_run(sampling_id, evaluation, capsys):
    """Refused in one line before any run is recorded."""
    from astrocurate.tracking import find_runs

    argv = ["evaluate", "--sampling-id", sampling_id, "--seeds", "1", "--device", "cuda"]
    before = len(find_runs("evaluation", include_unfinished=True))
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "CUDA" in err[0], err
    assert len(find_runs("evaluation", include_unfinished=True)) == before
