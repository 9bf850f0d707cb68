"""Self-supervised pretraining of an encoder on cutouts: SimCLR or BYOL, losses from lightly.

The budget is counted in images seen, not epochs, so that arms of different sizes get the
same training. Step ``t`` takes its batch from a permutation of the images drawn for its
epoch and its augmentations from a generator seeded by ``(seed, t)``; the model starts
from ``seed``. So a run resumed from a checkpoint ends, on the CPU, with the same weights
as an uninterrupted one. Under ``torch.distributed`` every rank takes its slice of each
global batch and the gradients are averaged (DistributedDataParallel).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from astrocurate.algorithms import precision
from astrocurate.algorithms.ssl.augment import eval_view, radio_views
from astrocurate.algorithms.ssl.config import FEATURE_DIM, AugmentConfig, PretrainConfig
from astrocurate.algorithms.ssl.encoders import build_encoder
from astrocurate.errors import InvalidArgumentError

log = logging.getLogger(__name__)

#: Share of a GPU's free memory that the training images may take on it. Above it they
#: stay in host memory and each batch is copied over: the model, its optimiser and the
#: activations of two views need the rest.
_DEVICE_SHARE = 0.5

#: Share of the steps spent warming the learning rate up linearly (then cosine decay).
WARMUP_SHARE = 0.1


class _SimCLR(nn.Module):
    def __init__(self, config: PretrainConfig) -> None:
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        dim = FEATURE_DIM[config.encoder]
        self.encoder = build_encoder(config.encoder, seed=config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            self.projection = SimCLRProjectionHead(dim, dim, config.projection_dim)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(views))


class _BYOL(nn.Module):
    def __init__(self, config: PretrainConfig) -> None:
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        dim, out = FEATURE_DIM[config.encoder], config.projection_dim
        self.encoder = build_encoder(config.encoder, seed=config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            self.projection = BYOLProjectionHead(dim, 2 * dim, out)
            self.prediction = BYOLPredictionHead(out, 2 * dim, out)
        self.momentum_encoder = copy.deepcopy(self.encoder)
        self.momentum_projection = copy.deepcopy(self.projection)
        deactivate_requires_grad(self.momentum_encoder)
        deactivate_requires_grad(self.momentum_projection)
        self.momentum_range = config.momentum

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.prediction(self.projection(self.encoder(views)))

    @torch.no_grad()
    def target(self, views: torch.Tensor) -> torch.Tensor:
        return self.momentum_projection(self.momentum_encoder(views))

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.encoder, self.momentum_encoder, momentum)
        update_momentum(self.projection, self.momentum_projection, momentum)


def _config_record(config: PretrainConfig) -> dict[str, Any]:
    """Return what a checkpoint records of its configuration (to refuse another)."""
    return {k: repr(v) for k, v in asdict(config).items()}


def _recorded_config(state: dict) -> dict[str, Any] | None:
    """Return a checkpoint's configuration record, as this version writes it.

    Checkpoints written before ``precision`` recorded ``bf16=True``: bf16 on CUDA, float32
    on the CPU, which is ``precision='auto'``; so a run interrupted before the upgrade
    resumes after it.
    """
    record = state.get("config")
    if record is not None and record.get("bf16") == "True" and "precision" not in record:
        record = {k: v for k, v in record.items() if k != "bf16"} | {"precision": "'auto'"}
    return record


def _learning_rate(step: int, total: int, base: float) -> float:
    warmup = max(1, int(WARMUP_SHARE * total))
    if step < warmup:
        return base * (step + 1) / warmup
    from lightly.utils.scheduler import cosine_schedule

    return base * cosine_schedule(step - warmup, max(1, total - warmup), 1.0, 0.0)


class _EpochOrders:
    """Each epoch's order of the ``n`` images: a permutation seeded by ``seed`` and the epoch.

    Drawn once per epoch and kept, not once per step: on a million images a permutation
    costs the host ~15 ms, as long as a training step takes a GPU.
    """

    def __init__(self, seed: int, n: int) -> None:
        self.seed, self.n = seed, n
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.int64)

    def batch(self, step: int, batch: int, per_epoch: int) -> torch.Tensor:
        """Images of global batch ``step``: a slice of its epoch's permutation (wrapping)."""
        epoch, position = divmod(step, per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=generator)
        return self._order[(position * batch + torch.arange(batch)) % self.n]


def _images_stay_on_host(images: Tensor, device: torch.device) -> bool:
    """Whether ``images`` are too large for the GPU ``device`` beside training.

    True when they would take more than :data:`_DEVICE_SHARE` of its free memory; never
    off CUDA.
    """
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return images.element_size() * images.numel() > _DEVICE_SHARE * free


def _world() -> tuple[int, int]:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed:
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def pretrain(
    images: torch.Tensor,
    rms: torch.Tensor,
    config: PretrainConfig,
    *,
    device: str | torch.device = "cpu",
    state: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Pretrain an encoder on ``images`` and return it (eval mode, on the CPU).

    Parameters
    ----------
    images : Tensor, shape (N, S, S)
        Raw pixels, already at ``config.augment.image_size``.
    rms : Tensor, shape (N,)
        Noise rms of each image (the augmentation's noise scale).
    config : PretrainConfig
    device : str or torch.device
    state : dict, optional
        A checkpoint given earlier to ``on_checkpoint``: training resumes after its step.
    on_checkpoint : callable, optional
        Called (on rank 0) with the training state at each epoch end and at the last step.
    on_step : callable, optional
        Called (on rank 0) with each step's index and loss, at the end of the step's epoch
        (before ``on_checkpoint``): reading losses makes the host wait for the device.

    Raises
    ------
    InvalidArgumentError
        Fewer than two images, or a ``state`` of another configuration.
    """
    config.validate()
    n = len(images)
    if n < 2:
        raise InvalidArgumentError(f"pretraining needs at least 2 images, got {n}")
    device = torch.device(device)
    model = (_SimCLR if config.method == "simclr" else _BYOL)(config).to(device)
    if precision.channels_last_pays(device, config.precision, model):
        model.to(memory_format=torch.channels_last)  # the layout of bf16 convolutions there
    precision.hint_bf16(device, config.precision, model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    start = 0
    if state is not None:
        if _recorded_config(state) != _config_record(config):
            raise InvalidArgumentError("checkpoint: written by another pretraining configuration")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    _train_steps(model, optimizer, images, rms, config, device, start, on_checkpoint, on_step)
    if _world()[1] > 1:  # rank 0's BatchNorm statistics (DDP broadcasts them at each forward)
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)
    return model.encoder.eval().cpu().to(memory_format=torch.contiguous_format)


def _train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    rms: torch.Tensor,
    config: PretrainConfig,
    device: torch.device,
    start: int,
    on_checkpoint: Callable[[dict], None] | None,
    on_step: Callable[[int, float], None] | None,
) -> None:
    """Run steps ``start .. total - 1``, checkpointing at epoch ends and at the last step."""
    n, rank, world = len(images), *_world()
    batch, total, per_epoch = config.batch(n), config.total_steps(n), config.steps_per_epoch(n)
    if batch % world:  # NT-Xent gathers equal slices from every rank
        raise InvalidArgumentError(
            f"--batch-size: {batch} does not split evenly over {world} processes"
        )
    network = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    loss_of = _simclr_loss(config, world) if config.method == "simclr" else _byol_loss(model)
    on_host = _images_stay_on_host(images, device)
    if on_host:
        log.info(
            "the %d training images (%.1f GB) stay in host memory; each batch is copied to %s",
            n,
            images.element_size() * images.numel() / 1e9,
            device,
        )
    else:
        images = images.to(device)
    rms = rms.to(device)
    autocast = precision.autocast(device, config.precision)
    model.train()
    losses: list[tuple[int, Tensor]] = []  # read on the host at epoch ends, not every step
    orders = _EpochOrders(config.seed, n)
    for step in range(start, total):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, total, config.learning_rate)
        index = orders.batch(step, batch, per_epoch).tensor_split(world)[rank]
        generator = torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 64 + rank)
        on_device = index.to(device, non_blocking=True)
        x = _gathered(images, index, device) if on_host else images[on_device]
        r = rms[on_device]
        views = [radio_views(x, r, config.augment, generator) for _ in range(2)]
        loss = loss_of(network, views, step, total, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if rank == 0 and on_step is not None:
            losses.append((step, loss.detach()))
        epoch_end = (step + 1) % per_epoch == 0 or step + 1 == total
        if rank == 0 and epoch_end:
            _report_losses(losses, on_step)  # before the checkpoint, which may save them
        if rank == 0 and on_checkpoint is not None and epoch_end:
            on_checkpoint(
                {
                    "step": step + 1,
                    "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "optimizer": copy.deepcopy(optimizer.state_dict()),
                    "config": _config_record(config),
                }
            )


def _gathered(images: Tensor, index: Tensor, device: torch.device) -> Tensor:
    """Return ``images[index]`` gathered on the host and sent to ``device`` without a wait.

    On CUDA the rows are gathered into pinned memory, so the copy is asynchronous.
    """
    shape = (len(index), *images.shape[1:])
    batch = torch.empty(shape, dtype=images.dtype, pin_memory=device.type == "cuda")
    torch.index_select(images, 0, index, out=batch)
    return batch.to(device, non_blocking=True)


def _report_losses(losses: list[tuple[int, Tensor]], on_step: Callable | None) -> None:
    """Call ``on_step`` with each kept step's loss as a float, then forget them.

    Reading a loss makes the host wait for the device: done once per epoch, the host can
    prepare the next steps' views while the device still computes.
    """
    if on_step is not None and losses:
        values = torch.stack([loss for _, loss in losses]).tolist()
        for (step, _), value in zip(losses, values, strict=True):
            on_step(step, value)
    losses.clear()


def _simclr_loss(config: PretrainConfig, world: int) -> Callable:
    from lightly.loss import NTXentLoss

    criterion = NTXentLoss(temperature=config.temperature, gather_distributed=world > 1)

    def loss(network: nn.Module, views: list, step: int, total: int, autocast: Any) -> Tensor:
        with autocast:
            z0, z1 = network(views[0]), network(views[1])
        return criterion(z0.float(), z1.float())  # the loss in float32, outside autocast

    return loss


def _byol_loss(model: _BYOL) -> Callable:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.utils.scheduler import cosine_schedule

    criterion = NegativeCosineSimilarity()

    def loss(network: nn.Module, views: list, step: int, total: int, autocast: Any) -> Tensor:
        first, last = model.momentum_range
        model.update_momentum(cosine_schedule(step, total, first, last))
        with autocast:
            p0, p1 = network(views[0]), network(views[1])
            z0, z1 = model.target(views[0]), model.target(views[1])
        p0, p1, z0, z1 = (t.float() for t in (p0, p1, z0, z1))  # the loss in float32
        return 0.5 * (criterion(p0, z1) + criterion(p1, z0))

    return loss


@torch.inference_mode()
def embed(
    encoder: nn.Module,
    images: torch.Tensor,
    config: AugmentConfig,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Return the frozen features of ``images`` (unaugmented views), float32 (N, dim)."""
    encoder = encoder.to(device).eval()
    # torch.nanquantile (the asinh stretch) takes at most 2**24 values at once
    batch_size = max(1, min(batch_size, (1 << 24) // config.image_size**2 - 1))
    parts = []
    for start in range(0, len(images), batch_size):
        views = eval_view(images[start : start + batch_size].to(device), config)
        parts.append(encoder(views).float().cpu())
    encoder.cpu()
    return torch.cat(parts).numpy().astype(np.float32, copy=False)
