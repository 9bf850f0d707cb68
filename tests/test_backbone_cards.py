"""A backbone described without building it says what the built one says, without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from astrocurate.algorithms.backbones import WeightsError, create_backbone, describe_backbone
from astrocurate.errors import InvalidArgumentError

SCATTERING_CASES = [
    ("scattering", {}),
    ("scattering-j4-rot-renorm-max", {}),
    ("scattering-j4-rot-renorm-max", {"input_size": 128}),
    ("scattering-j2-l4-spatial", {"channels": "fold"}),
    ("scattering-j4-renorm", {"pooling": "mean"}),
]


@pytest.mark.parametrize(("name", "options"), SCATTERING_CASES)
def test_the_card_of_a_scattering_backbone_is_that_of_the_built_one(name, options) -> None:
    card = describe_backbone(name, **options)
    built = create_backbone(name, **options)
    assert card == built.card
    assert card.dim == built.module.dim


@pytest.mark.parametrize(
    ("name", "options", "error"),
    [
        ("scattering-j9", {}, InvalidArgumentError),
        ("scattering-rot-rot", {}, InvalidArgumentError),
        ("scattering", {"input_size": 60}, InvalidArgumentError),
        ("scattering", {"pooling": "max"}, InvalidArgumentError),
        ("scattering", {"arch": "resnet18"}, InvalidArgumentError),
        ("scattering", {"channels": "stack"}, InvalidArgumentError),
        ("scattering", {"weights": "/nonexistent/w.safetensors"}, WeightsError),
        ("  ", {}, InvalidArgumentError),
    ],
)
def test_describing_refuses_what_building_refuses(name, options, error) -> None:
    with pytest.raises(error) as described:
        describe_backbone(name, **options)
    with pytest.raises(error) as built:
        create_backbone(name, **options)
    assert str(described.value) == str(built.value)


def test_backbones_that_must_be_built_to_be_described_have_no_card() -> None:
    assert describe_backbone("timm:resnet18") is None
    assert describe_backbone("hf:facebook/dinov2-small") is None


def test_describing_the_default_backbone_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from astrocurate.algorithms.backbones import describe_backbone\n"
        "card = describe_backbone('scattering-j4-rot-renorm-max')\n"
        "print(card.dim, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["106", "False"]
