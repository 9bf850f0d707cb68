"""The precision networks compute in: autocast on CUDA, bf16 on CPUs that have it."""

from __future__ import annotations

import logging

import pytest
import torch

from astrocurate.algorithms import precision

CPU = torch.device("cpu")


def _product_dtype(context) -> torch.dtype:
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with context:
        return (a @ b).dtype


def test_fp32_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert _product_dtype(precision.autocast(CPU, "fp32")) == torch.float32
    assert not caplog.records


def test_bf16_on_a_cpu_with_bf16_units_autocasts_each_time_it_is_entered(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    with caplog.at_level(logging.WARNING):
        context = precision.autocast(CPU, "bf16")
        assert [_product_dtype(context) for _ in range(2)] == [torch.bfloat16] * 2
    assert not caplog.records
    assert _product_dtype(torch.autocast("cpu", enabled=False)) == torch.float32  # left


@pytest.mark.parametrize(
    ("wanted", "has_bf16", "reason"),
    [
        (
            "bf16",
            False,
            "this CPU has no bf16 instructions (AVX512-BF16 or AMX) and emulates it slowly",
        ),
        ("fp16", True, "it applies on a GPU only"),
    ],
    ids=["bf16-without-units", "fp16"],
)
def test_a_precision_the_cpu_cannot_use_computes_in_fp32_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    wanted: str,
    has_bf16: bool,
    reason: str,
) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    with caplog.at_level(logging.WARNING):
        context = precision.autocast(CPU, wanted)
    assert _product_dtype(context) == torch.float32
    assert [r.getMessage() for r in caplog.records] == [
        f"--precision {wanted}: {reason}; computing in fp32"
    ]


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, False), (True, False, True), (False, True, True)],
    ids=["neither", "avx512-bf16", "amx"],
)
def test_bf16_units_are_those_torch_finds(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert precision.cpu_has_bf16() is expected


def test_an_older_torch_without_the_probes_has_no_bf16_units(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert precision.cpu_has_bf16() is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("wanted", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cuda_autocasts_to_the_precision_asked(wanted: str, dtype: torch.dtype) -> None:
    a, b = torch.randn(8, 8, device="cuda"), torch.randn(8, 8, device="cuda")
    with precision.autocast(torch.device("cuda"), wanted):
        assert (a @ b).dtype == dtype


@pytest.mark.parametrize(
    ("device", "wanted", "has_bf16", "expected"),
    [
        ("cuda", "auto", False, "bf16"),
        ("cpu", "auto", True, "fp32"),
        ("cuda", "fp16", False, "fp16"),
        ("cpu", "fp16", True, "fp32"),
        ("cpu", "bf16", True, "bf16"),
        ("cpu", "bf16", False, "fp32"),
        ("cpu", "fp32", True, "fp32"),
    ],
)
def test_what_each_precision_computes_in(
    monkeypatch: pytest.MonkeyPatch, device: str, wanted: str, has_bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    assert precision.computed_in(torch.device(device), wanted) == expected


@pytest.mark.parametrize(
    ("device", "wanted", "has_bf16", "convolutional", "expected"),
    [
        ("cpu", "bf16", True, True, True),
        ("cpu", "bf16", True, False, False),  # no convolution: the FFT-based scattering
        ("cpu", "bf16", False, True, False),  # computed in fp32
        ("cpu", "fp32", True, True, False),  # fp32: the gain depends on the size
        ("cpu", "auto", True, True, False),  # auto is fp32 on the CPU
        ("cuda", "bf16", True, True, False),  # not measured on a GPU
    ],
)
def test_channels_last_for_convolutions_in_bf16_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    wanted: str,
    has_bf16: bool,
    convolutional: bool,
    expected: bool,
) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    layer = torch.nn.Conv2d(3, 4, 3) if convolutional else torch.nn.Linear(3, 4)
    module = torch.nn.Sequential(torch.nn.Identity(), layer)
    assert precision.channels_last_pays(torch.device(device), wanted, module) is expected


@pytest.mark.parametrize(
    ("wanted", "has_bf16", "convolutional", "hinted"),
    [
        ("fp32", True, True, True),
        ("auto", True, True, True),
        ("bf16", True, True, False),  # asked for
        ("fp32", False, True, False),  # no bf16 units: it would not pay
        ("fp32", True, False, False),  # no convolution: the FFT-based scattering
    ],
)
def test_bf16_is_suggested_once_where_it_would_pay(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    wanted: str,
    has_bf16: bool,
    convolutional: bool,
    hinted: bool,
) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(precision, "_HINTED", set())
    layer = torch.nn.Conv2d(3, 4, 3) if convolutional else torch.nn.Linear(3, 4)
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        for _ in range(3):
            precision.hint_bf16(CPU, wanted, torch.nn.Sequential(layer))
    said = [r.getMessage() for r in caplog.records if "--precision bf16 would" in r.getMessage()]
    assert len(said) == int(hinted)
