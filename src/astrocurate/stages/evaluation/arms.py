"""One arm and seed of an evaluation: pretrain (or load) an encoder, embed, probe.

An arm is a set of cutouts to pretrain on (the curated sample, its random baseline, a
draw from the pool) or an encoder trained elsewhere (``--weights FILE``). Each arm and
seed works in ``arms/<arm>/seed_<s>/`` and leaves a file per finished stage, so that a
killed run resumes where it stopped: ``checkpoint.pt`` at every epoch end while
training, then ``encoder.pt``, ``embeddings.npy`` and ``scores.json``. Training is
deterministic on the CPU (:func:`astrocurate.algorithms.ssl.pretrain`), so a resumed
arm ends with the same encoder as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astrocurate.algorithms import precision
from astrocurate.algorithms.probes import cross_validate_probes
from astrocurate.algorithms.ssl import (
    PretrainConfig,
    embed,
    encoder_checkpoint,
    load_encoder,
    pretrain,
)
from astrocurate.io.atomic import save_npy, save_torch, write_json
from astrocurate.stages.evaluation.labelled import load_pixels
from astrocurate.stages.evaluation.outputs import (
    ARMS_DIR,
    CHECKPOINT,
    EMBEDDINGS,
    ENCODER,
    LOSS,
    SEED_SCORES,
    TIMING,
    seed_dir_name,
)
from astrocurate.stages.evaluation.plan import Arm, Plan

log = logging.getLogger(__name__)

Folds = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass
class ArmContext:
    """What every arm and seed shares: the labelled cutouts, the device and the pixels.

    Attributes
    ----------
    directory : Path
        The evaluation run directory.
    pretrain_config : callable
        Seed -> :class:`PretrainConfig` (the same budget, model and augmentations for all).
    labelled_images : Tensor, shape (m, S, S)
        Raw pixels of the labelled cutouts, resized to the training size.
    labels : ndarray of bool, shape (m, C)
    categories : tuple of str
    knn_k : int
    device : torch.device
    arm_pixels : callable
        Arm -> (images, rms) of its cutouts (read once per arm, on first use).
    """

    directory: Path
    pretrain_config: Callable[[int], PretrainConfig]
    labelled_images: torch.Tensor
    labels: np.ndarray
    categories: tuple[str, ...]
    knn_k: int
    device: torch.device
    arm_pixels: Callable[[Arm], tuple[torch.Tensor, torch.Tensor]]
    _cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def pixels(self, arm: Arm) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the arm's training pixels and rms, read once."""
        if arm.name not in self._cache:
            self._cache.clear()  # one arm's pixels in memory at a time
            self._cache[arm.name] = self.arm_pixels(arm)
        return self._cache[arm.name]


def arm_context(plan: Plan, directory: Path, device: Any) -> ArmContext:
    """Return what the arms of ``plan`` share in ``directory``: labelled pixels, the reader."""
    size, merged = plan.options.image_size, plan.sampling.merged_dir
    images, _ = load_pixels(merged, plan.labelled.rows, size)
    return ArmContext(
        directory=directory,
        pretrain_config=plan.options.pretrain_config,
        labelled_images=images,
        labels=plan.labelled.labels,
        categories=plan.labelled.categories,
        knn_k=plan.options.knn_k,
        device=device,
        arm_pixels=lambda arm: load_pixels(merged, arm.rows, size),
    )


def seed_directory(run_dir: Path, arm: str, seed: int) -> Path:
    """Folder of one arm and seed inside an evaluation run directory."""
    return run_dir / ARMS_DIR / arm / seed_dir_name(seed)


def score_arm_seed(context: ArmContext, arm: Arm, seed: int, folds: Folds) -> dict[str, float]:
    """Return the probes' scores of one arm and seed, computing what is not yet on disk."""
    directory = seed_directory(context.directory, arm.name, seed)
    done = directory / SEED_SCORES
    if done.is_file():
        return json.loads(done.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    embeddings_path = directory / EMBEDDINGS
    if embeddings_path.is_file():
        embeddings = np.load(embeddings_path)
    else:
        encoder = _encoder(context, arm, seed, directory)
        config = context.pretrain_config(seed).augment
        embeddings = embed(encoder, context.labelled_images, config, device=context.device)
        save_npy(embeddings_path, embeddings)
    scores = cross_validate_probes(
        embeddings,
        context.labels,
        folds,
        categories=context.categories,
        k=context.knn_k,
        seed=seed,
    )
    scores = {key: float(value) for key, value in scores.items()}
    write_json(done, scores)
    log.info(
        "%s seed %d: kNN %.3f, linear %.3f balanced accuracy",
        arm.name,
        seed,
        scores.get("knn_balanced_accuracy", float("nan")),
        scores.get("linear_balanced_accuracy", float("nan")),
    )
    return scores


def _encoder(context: ArmContext, arm: Arm, seed: int, directory: Path) -> torch.nn.Module:
    """Return the arm's encoder: its weights file, the finished one, or train it now."""
    if arm.weights is not None:
        return load_encoder(arm.weights)
    final = directory / ENCODER
    if final.is_file():
        return load_encoder(final)
    encoder = _train(context, arm, seed, directory)
    save_torch(final, encoder_checkpoint(encoder))
    (directory / CHECKPOINT).unlink(missing_ok=True)
    return encoder


def _train(context: ArmContext, arm: Arm, seed: int, directory: Path) -> torch.nn.Module:
    """Pretrain the arm's encoder for one seed, from its last checkpoint if there is one."""
    config = context.pretrain_config(seed)
    checkpoint = directory / CHECKPOINT
    state = (
        torch.load(checkpoint, map_location="cpu", weights_only=True)
        if checkpoint.is_file()
        else None
    )
    losses: list[float] = []
    if state is not None:
        losses = np.load(directory / LOSS).tolist()[: state["step"]]
        log.info("%s seed %d: resuming after step %d", arm.name, seed, state["step"])

    def on_checkpoint(checkpoint_state: dict) -> None:
        save_npy(directory / LOSS, np.asarray(losses, dtype=np.float32))  # before: may run ahead
        save_torch(checkpoint, checkpoint_state)

    images, rms = context.pixels(arm)
    first_step = 0 if state is None else int(state["step"])
    started = time.perf_counter()
    encoder = pretrain(
        images,
        rms,
        config,
        device=context.device,
        state=state,
        on_checkpoint=on_checkpoint,
        on_step=lambda step, loss: losses.append(float(loss)),
    )
    seconds = time.perf_counter() - started
    trained = (config.total_steps(len(images)) - first_step) * config.batch(len(images))
    save_npy(directory / LOSS, np.asarray(losses, dtype=np.float32))
    write_json(
        directory / TIMING,
        {
            "seconds": seconds,
            "images": trained,
            "images_per_second": trained / seconds if seconds > 0 else float("nan"),
            "device": str(context.device),
            "precision": precision.computed_in(context.device, config.precision),
            "resumed_at_step": first_step,
        },
    )
    log.info(
        "%s seed %d: pretrained on %d cutouts, %d images seen, %.0f images/s",
        arm.name,
        seed,
        len(images),
        config.images_seen,
        trained / max(seconds, 1e-9),
    )
    return encoder
