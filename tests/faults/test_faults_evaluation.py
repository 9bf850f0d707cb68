"""Step 6 under faults: ``scripts/evaluate.py`` killed mid-training, rerun.

The evaluation of a sample of 100 cutouts of the session clustering, two arms and one
seed of a budget of ten batches. Kill points: right after a seeded epoch checkpoint
of the curated arm (training resumes from it), before the random arm's encoder is renamed
into place, and (full sweep) before the scores of a seeded arm. The result (every
encoder, embedding, loss curve, score and metric) must be bit for bit that of an
uninterrupted run on the CPU; timings and the report are left out.
"""

from __future__ import annotations

import pytest
from faultkit import (
    FULL,
    PYTHON,
    ROOT,
    At,
    assert_same_outputs,
    check_finished_runs,
    rng,
    runs_of,
    said_resumed_or_reused,
)

from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample
from astrocurate.stages.evaluation.run import EvaluationOptions, evaluate

pytestmark = pytest.mark.slow

OPTIONS = {
    "seeds": 1,
    "images_seen": 160,
    "batch_size": 16,
    "image_size": 32,
    "max_per_category": 20,
    "folds": 2,
    "knn_k": 5,
    "device": "cpu",
}
NOT_RESULTS = ("report/*", "*/timing.json")


def _argv(sampling_id: str) -> list[str]:
    argv = [PYTHON, str(ROOT / "scripts" / "evaluate.py"), "--sampling-id", sampling_id]
    for key, value in OPTIONS.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def test_evaluation_killed_mid_training_resumes_to_the_same_result(fault_inputs, fault_env):
    fault_env.use("inputs")
    sample = curated_sample(fault_inputs.clustering_id, SamplingOptions(100), report=False)
    fault_env.use("reference")
    reference = evaluate(sample.run_id, EvaluationOptions(**OPTIONS))

    r = rng(6)
    # 10 steps of 16: a checkpoint at the end of epoch 1 (step 7) and at step 10
    kills = [
        At("*/arms/curated/seed_0/checkpoint.pt", nth=1, when="after"),
        At("*/arms/random/seed_0/encoder.pt", when="before"),
    ]
    if FULL:
        kills.append(At("*/arms/*/seed_0/scores.json", nth=int(r.integers(1, 3)), when="before"))
    runner = fault_env.runner("faulted")
    experiment = fault_env.use("faulted")
    argv = _argv(sample.run_id)
    for kill in kills:
        attempt = runner.run(argv, kill)
        assert attempt.fired and attempt.returncode == -9, runner.summary()
        check_finished_runs(experiment)

    final = runner.run(argv)
    assert final.returncode == 0, final.where()
    assert said_resumed_or_reused(final.stderr), final.where()
    runs = runs_of(experiment, "evaluation")
    assert [r.status for r in runs] == ["FINISHED"], runner.summary()
    compared = assert_same_outputs(
        reference.output_dir,
        runs[0].output_dir,
        exclude=NOT_RESULTS,
        context=f"\n{runner.summary()}",
    )
    assert compared >= 2 * 4 + 4  # encoder, embeddings, loss, scores per arm-seed + the run's
