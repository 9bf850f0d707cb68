"""Self-supervised pretraining (algorithms/ssl): augmentations, encoders, training, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from astrocurate.algorithms.backbones.weights import WeightsError
from astrocurate.algorithms.ssl import (
    AugmentConfig,
    PretrainConfig,
    augment,
    build_encoder,
    embed,
    encoder_checkpoint,
    eval_view,
    load_encoder,
    pretrain,
    radio_views,
    resize_raw,
    robust_rms,
)
from astrocurate.errors import InvalidArgumentError
from astrocurate.io.atomic import save_torch

SMALL = AugmentConfig(image_size=32)


def _images(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, size, size), generator=generator) * 1e-4


def _views(images, rms, config=SMALL, seed=0):
    return radio_views(images, rms, config, torch.Generator().manual_seed(seed))


def test_views_have_the_size_asked_and_depend_only_on_the_generator_seed():
    images = _images()
    rms = robust_rms(images)
    first, again, other = _views(images, rms), _views(images, rms), _views(images, rms, seed=1)
    assert first.shape == (8, 1, 32, 32)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.isfinite(first).all()


def test_rotation_moves_an_off_centre_source():
    rows, columns = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    image = torch.exp(-((rows - 15.5) ** 2 + (columns - 25.5) ** 2) / 4.5)[None]  # 10 px right
    config = AugmentConfig(
        image_size=32, max_shift=0.0, scale_range=(1.0, 1.0), flip=False, max_noise=0.0
    )
    positions = set()
    for seed in range(6):
        view = _views(image, torch.ones(1), config, seed)[0, 0]
        row, column = divmod(int(view.argmax()), 32)
        positions.add((row, column))
        assert math.hypot(row - 15.5, column - 15.5) == pytest.approx(10, abs=2.5)
    assert len(positions) >= 4  # different angles put it elsewhere on the circle


def test_noise_scales_with_the_images_rms():
    flat = torch.zeros((64, 32, 32))
    config = AugmentConfig(
        image_size=32,
        max_shift=0.0,
        scale_range=(1.0, 1.0),
        flip=False,
        max_noise=1.0,
        normalization=AugmentConfig().normalization.__class__(method="fixed"),
    )
    quiet = _views(flat, torch.full((64,), 1.0), config).std()
    loud = _views(flat, torch.full((64,), 10.0), config).std()
    assert loud / quiet == pytest.approx(10.0, rel=1e-3)


def test_eval_view_has_no_randomness_and_resizes():
    images = _images(size=64)
    assert torch.equal(eval_view(images, SMALL), eval_view(images, SMALL))
    assert eval_view(images, SMALL).shape == (8, 1, 32, 32)


def test_robust_rms_and_resize_raw():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((4, 64, 64), generator=generator) * 3.0
    noise[:, :4, :4] = float("nan")
    assert torch.allclose(robust_rms(noise), torch.full((4,), 3.0), rtol=0.1)
    resized = resize_raw(noise, 32)
    assert resized.shape == (4, 32, 32) and torch.isfinite(resized).all()
    block = torch.nan_to_num(noise[:, :2, :2], nan=0.0).mean(dim=(1, 2))
    assert torch.allclose(resized[:, 0, 0], block)  # area average of each 2x2 block


@pytest.mark.parametrize(
    ("config", "option"),
    [
        (AugmentConfig(image_size=4), "--image-size"),
        (AugmentConfig(max_shift=0.9), "max_shift"),
        (AugmentConfig(scale_range=(1.2, 0.8)), "scale_range"),
        (AugmentConfig(max_noise=-1.0), "max_noise"),
    ],
)
def test_bad_augmentations_are_refused_naming_the_field(config, option):
    with pytest.raises(InvalidArgumentError, match=option) as caught:
        config.validate()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("change", "option"),
    [
        ({"method": "dino"}, "--method"),
        ({"images_seen": 0}, "--images-seen"),
        ({"batch_size": 1}, "--batch-size"),
        ({"learning_rate": 0.0}, "--learning-rate"),
        ({"momentum": (0.99, 1.5)}, "momentum"),
        ({"precision": "fp16"}, "--precision"),
    ],
)
def test_bad_pretraining_options_are_refused_naming_the_option(change, option):
    with pytest.raises(InvalidArgumentError, match=option):
        PretrainConfig(**change).validate()


def test_budget_is_counted_in_images():
    config = PretrainConfig(images_seen=100, batch_size=16)
    assert config.total_steps(1000) == 7
    assert config.total_steps(10) == 10  # the batch is never larger than the images
    assert config.steps_per_epoch(40) == 3


def test_encoder_is_one_channel_512_d_and_seeded():
    encoder = build_encoder(seed=1).eval()
    with torch.no_grad():
        assert encoder(torch.zeros((2, 1, 32, 32))).shape == (2, 512)
    same, other = build_encoder(seed=1), build_encoder(seed=2)
    weight = "conv1.weight"
    assert torch.equal(encoder.state_dict()[weight], same.state_dict()[weight])
    assert not torch.equal(encoder.state_dict()[weight], other.state_dict()[weight])


def test_encoder_files_round_trip_in_every_accepted_form(tmp_path):
    encoder = build_encoder(seed=4)
    reference = encoder.state_dict()
    ours = tmp_path / "ours.pt"
    save_torch(ours, encoder_checkpoint(encoder))
    assert _same(load_encoder(ours).state_dict(), reference)

    prefixed = tmp_path / "lightly.pt"
    state = {f"backbone.{k}": v for k, v in reference.items()}
    state["projection_head.layers.0.weight"] = torch.zeros(4, 4)  # an SSL head: ignored
    torch.save({"state_dict": state}, prefixed)
    assert _same(load_encoder(prefixed).state_dict(), reference)

    rgb = tmp_path / "rgb.pt"
    three = dict(reference)
    three["conv1.weight"] = reference["conv1.weight"].repeat(1, 3, 1, 1) / 3
    torch.save(three, rgb)
    folded = load_encoder(rgb).state_dict()["conv1.weight"]
    assert torch.allclose(folded, reference["conv1.weight"], atol=1e-6)


def test_weights_of_another_architecture_are_refused_in_one_line(tmp_path):
    vit = tmp_path / "vit_small.pt"
    torch.save({"patch_embed.proj.weight": torch.zeros(384, 1, 16, 16)}, vit)
    with pytest.raises(WeightsError, match=r"vit_small\.pt") as caught:
        load_encoder(vit)
    assert "\n" not in str(caught.value)


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_a_resumed_pretraining_ends_with_the_same_weights_on_the_cpu(method):
    images = _images(40)
    rms = robust_rms(images)
    config = PretrainConfig(method=method, images_seen=96, batch_size=16, augment=SMALL)
    states, losses = [], []
    whole = pretrain(
        images, rms, config, on_checkpoint=states.append, on_step=lambda s, v: losses.append(v)
    )
    assert [s["step"] for s in states] == [3, 6]  # epoch ends (40 images / 16) and the last
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    resumed = pretrain(images, rms, config, state=states[0])
    assert _same(whole.state_dict(), resumed.state_dict())
    untrained = build_encoder(seed=0).state_dict()
    assert not _same(whole.state_dict(), untrained)


def test_losses_are_read_once_per_epoch_in_order_before_its_checkpoint(monkeypatch):
    """Losses are read on the host once per epoch, not after every step (which would make
    the host wait for a GPU each step), all of them, in order, before the checkpoint that
    saves them."""
    from astrocurate.algorithms.ssl import training

    images = _images(40)
    config = PretrainConfig(images_seen=96, batch_size=16, augment=SMALL)
    events: list[tuple[str, int]] = []
    batch_of = training._EpochOrders.batch

    def logged(self, step, *args):
        events.append(("batch", step))
        return batch_of(self, step, *args)

    monkeypatch.setattr(training._EpochOrders, "batch", logged)
    pretrain(
        images,
        robust_rms(images),
        config,
        on_checkpoint=lambda state: events.append(("checkpoint", state["step"])),
        on_step=lambda step, loss: events.append(("loss", step)),
    )

    def epoch(steps: range) -> list[tuple[str, int]]:
        batches, losses = [("batch", s) for s in steps], [("loss", s) for s in steps]
        return [*batches, *losses, ("checkpoint", steps.stop)]

    assert events == epoch(range(3)) + epoch(range(3, 6))  # 40 images / 16: 3 steps an epoch


def test_each_epoch_order_is_drawn_once_and_batches_are_its_slices(monkeypatch):
    """The images' permutation is drawn once per epoch, not once per step (a host cost of
    ~15 ms per step on a million images), and every batch is the slice of its epoch's
    permutation that the seed and the step name, wrapping at the end."""
    from astrocurate.algorithms.ssl import training

    n, batch, per_epoch = 10, 4, 3  # the third batch of an epoch wraps around
    drawn = []
    randperm = torch.randperm

    def counted(*args, **kwargs):
        drawn.append(args[0])
        return randperm(*args, **kwargs)

    monkeypatch.setattr(torch, "randperm", counted)
    orders = training._EpochOrders(seed=7, n=n)
    batches = [orders.batch(step, batch, per_epoch) for step in range(3 * per_epoch)]
    assert drawn == [n, n, n]
    for step, got in enumerate(batches):
        epoch, position = divmod(step, per_epoch)
        order = randperm(n, generator=torch.Generator().manual_seed(7 * 1_000_003 + epoch))
        assert torch.equal(got, order[[(position * batch + i) % n for i in range(batch)]])


def test_noise_comes_from_the_generator_on_the_cpu_and_from_a_seed_it_draws_on_cuda():
    """On the CPU the noise is the generator's own next draw, as before (results recorded
    on the CPU stay reproducible); on a GPU it is drawn there, seeded by one draw."""
    size = (4, 1, 8, 8)
    noise = augment._noise(size, torch.device("cpu"), torch.Generator().manual_seed(3))
    assert torch.equal(noise, torch.randn(size, generator=torch.Generator().manual_seed(3)))
    if torch.cuda.is_available():
        on_gpu = augment._noise(size, torch.device("cuda"), torch.Generator().manual_seed(3))
        seed = int(torch.randint(1 << 62, (1,), generator=torch.Generator().manual_seed(3)))
        device_generator = torch.Generator("cuda").manual_seed(seed)
        assert on_gpu.is_cuda
        assert torch.equal(on_gpu, torch.randn(size, generator=device_generator, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_making_views_on_cuda_never_waits_for_the_device():
    """The draws come from a CPU generator; their copies to the GPU do not block."""
    images = _images(16).cuda()
    rms = robust_rms(images)
    generator = torch.Generator().manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        radio_views(images, rms, SMALL, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pretraining_steps_on_cuda_wait_for_the_device_once_per_epoch_at_most():
    """Twice the steps (the same set-up) add no wait but the extra epochs' loss reads."""
    import warnings

    images = _images(40)
    syncs = []
    for seen in (96, 192):  # 6 and 12 steps, 2 and 4 epochs
        config = PretrainConfig(images_seen=seen, batch_size=16, augment=SMALL)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                pretrain(
                    images, robust_rms(images), config, device="cuda", on_step=lambda s, v: None
                )
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs.append(sum("synchroniz" in str(w.message) for w in caught))
    assert syncs[1] - syncs[0] <= 2, syncs


def test_images_too_large_for_the_gpu_stay_on_the_host_and_train_the_same(monkeypatch):
    """Above half the GPU's free memory the images stay in host memory and each batch is
    gathered there and copied over; the training is the same, weight for weight."""
    from astrocurate.algorithms.ssl import training

    frees = iter([10_000, 5_000])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (next(frees), 20_000))
    images = torch.empty(1_000)  # 4,000 bytes
    cuda = torch.device("cuda")
    assert not training._images_stay_on_host(images, cuda)  # 4,000 <= 5,000
    assert training._images_stay_on_host(images, cuda)  # 4,000 > 2,500
    assert not training._images_stay_on_host(images, torch.device("cpu"))

    images = _images(20)
    config = PretrainConfig(images_seen=64, batch_size=16, augment=SMALL)
    on_device = pretrain(images, robust_rms(images), config)
    monkeypatch.setattr(training, "_images_stay_on_host", lambda images, device: True)
    on_host = pretrain(images, robust_rms(images), config)
    assert _same(on_device.state_dict(), on_host.state_dict())


@pytest.mark.parametrize("has_bf16", [True, False], ids=["bf16-units", "no-bf16-units"])
def test_pretraining_on_the_cpu_in_bf16_only_where_it_has_bf16_units(monkeypatch, has_bf16):
    """auto is float32 on the CPU; bf16 trains other weights where the CPU has bf16 units."""
    from astrocurate.algorithms import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    images = _images(20)
    weights, trained_channels_last = {}, {}
    for wanted in ("fp32", "auto", "bf16"):
        config = PretrainConfig(images_seen=32, batch_size=16, augment=SMALL, precision=wanted)
        states: list[dict] = []
        encoder = pretrain(images, robust_rms(images), config, on_checkpoint=states.append)
        weights[wanted] = encoder.state_dict()
        kernels = [v for v in states[-1]["model"].values() if v.ndim == 4]
        trained_channels_last[wanted] = all(
            k.is_contiguous(memory_format=torch.channels_last) for k in kernels
        )
        assert all(v.is_contiguous() for v in weights[wanted].values())  # handed back NCHW
    assert _same(weights["auto"], weights["fp32"])
    assert _same(weights["bf16"], weights["fp32"]) is not has_bf16
    # bf16 convolutions on the CPU train channels-last; float32 in the default layout
    assert trained_channels_last == {"fp32": False, "auto": False, "bf16": has_bf16}


def test_a_checkpoint_written_before_precision_existed_resumes_to_the_same_weights():
    """Checkpoints recorded bf16=True (bf16 on CUDA, float32 on the CPU): precision 'auto'."""
    images = _images(20)
    rms = robust_rms(images)
    config = PretrainConfig(images_seen=64, batch_size=16, augment=SMALL)
    states = []
    whole = pretrain(images, rms, config, on_checkpoint=states.append)
    old = {k: v for k, v in states[0]["config"].items() if k != "precision"}
    resumed = pretrain(images, rms, config, state={**states[0], "config": old | {"bf16": "True"}})
    assert _same(whole.state_dict(), resumed.state_dict())
    with pytest.raises(InvalidArgumentError, match="another pretraining configuration"):
        pretrain(images, rms, config, state={**states[0], "config": old | {"bf16": "False"}})


def test_a_checkpoint_of_another_configuration_is_refused():
    images = _images(20)
    rms = robust_rms(images)
    config = PretrainConfig(images_seen=32, batch_size=16, augment=SMALL)
    states = []
    pretrain(images, rms, config, on_checkpoint=states.append)
    other = PretrainConfig(images_seen=32, batch_size=16, augment=SMALL, seed=1)
    with pytest.raises(InvalidArgumentError, match="another pretraining configuration"):
        pretrain(images, rms, other, state=states[0])


def test_pretraining_needs_two_images():
    with pytest.raises(InvalidArgumentError, match="at least 2 images"):
        pretrain(_images(1), torch.ones(1), PretrainConfig(augment=SMALL))


def test_embed_gives_float32_features_in_order():
    images = _images(10)
    encoder = build_encoder()
    features = embed(encoder, images, SMALL, batch_size=4)
    assert features.shape == (10, 512) and features.dtype == np.float32
    single = embed(encoder, images[3:4], SMALL)
    assert np.allclose(features[3], single[0], atol=1e-5)


def _distributed_worker(rank: int, world: int, port: int, method: str, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        images = _images(24)
        config = PretrainConfig(method=method, images_seen=48, batch_size=16, augment=SMALL)
        checkpoints = []
        encoder = pretrain(images, robust_rms(images), config, on_checkpoint=checkpoints.append)
        torch.save({"encoder": encoder.state_dict(), "checkpoints": len(checkpoints)}, out % rank)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_two_processes_train_one_model_with_their_halves_of_each_batch(method, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = str(tmp_path / "rank%d.pt")
    torch.multiprocessing.spawn(
        _distributed_worker, args=(2, port, method, out), nprocs=2, join=True
    )
    results = [torch.load(out % rank) for rank in range(2)]
    assert _same(results[0]["encoder"], results[1]["encoder"])  # gradients were averaged
    assert [r["checkpoints"] for r in results] == [2, 0]  # rank 0 alone checkpoints
    assert not _same(results[0]["encoder"], build_encoder(seed=0).state_dict())


def test_a_torchvision_resnet18_checkpoint_loads_folded_to_one_channel(tmp_path):
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    path = tmp_path / "torchvision_resnet18.pt"
    torch.save(model.state_dict(), path)
    encoder = load_encoder(path)
    folded = model.state_dict()["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(encoder.state_dict()["conv1.weight"], folded)
    assert torch.equal(encoder.state_dict()["layer4.1.bn2.weight"], model.layer4[1].bn2.weight)
