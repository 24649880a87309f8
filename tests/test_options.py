"""One source for every option: the ``Literal`` types, their tuples, and errors that speak Python or flags."""
from __future__ import annotations

import typing

import numpy as np
import pytest

from cddfuse import options
from cddfuse.cli.main import build_parser, main
from cddfuse.errors import CDDFuseError, UsageError
from cddfuse.fusion import Fuser, minmax_normalize, resolve_residual
from cddfuse.models import CDDFuseConfig
from cddfuse.models.weights import WeightsInfo


@pytest.mark.parametrize("type_name, tuple_name", [
    ("Task", "TASKS"), ("ResidualMode", "RESIDUAL_MODES"), ("ResidualChoice", "RESIDUAL_CHOICES"),
    ("Method", "METHODS"), ("Normalize", "NORMALIZE_MODES"), ("ColorMode", "COLOR_MODES"),
    ("Precision", "PRECISIONS"), ("Backend", "BACKENDS"),
])
def test_tuples_are_the_literal_types(type_name, tuple_name):
    assert getattr(options, tuple_name) == typing.get_args(getattr(options, type_name))


def test_cli_choices_come_from_the_options_module():
    fuse = build_parser()._subparsers._group_actions[0].choices["fuse"]  # type: ignore[union-attr]
    choices = {a.dest: tuple(a.choices) for a in fuse._actions if a.choices}
    assert choices["task"] == options.TASKS and choices["residual"] == options.RESIDUAL_CHOICES
    assert choices["method"] == options.METHODS and choices["precision"] == options.PRECISIONS


def test_usage_errors_are_value_errors_naming_the_parameter():
    with pytest.raises(ValueError, match=r"^method='x': unknown method; choose one of cddfuse, lite, mean, max$"):
        Fuser(method="x")
    with pytest.raises(ValueError, match="sepia") as e:
        Fuser(method="max", color="sepia")
    assert isinstance(e.value, UsageError) and isinstance(e.value, CDDFuseError)
    assert (e.value.parameter, e.value.value) == ("color", "sepia")
    assert e.value.cli_message() == "--color sepia: unknown color; choose one of auto, gray"


@pytest.mark.parametrize("device, reason", [("tpu9", "not a device"), ("meta", "unsupported device type")])
def test_bad_device_is_one_line_with_the_flag(device, reason, tmp_path, capsys):
    from cddfuse.io.image import write_image

    a = write_image(tmp_path / "a.png", np.zeros((4, 4)))
    assert main(["fuse", str(a), str(a), "-o", str(tmp_path / "o.png"), "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cddfuse fuse: error: --device {device}: {reason}; use auto, cpu, cuda or cuda:N"
    assert not (tmp_path / "o.png").exists()


def test_residual_policy_is_the_authors():
    ours_mif = WeightsInfo(task="mif", residual="vis", normalize="minmax", config=CDDFuseConfig(),
                           source_format="cddfuse")
    assert resolve_residual("auto", "ivf", None) == "vis"
    assert resolve_residual("auto", "mif", None) == "sum"        # IVF weights on medical pairs
    assert resolve_residual("auto", "mif", ours_mif) == "vis"    # our MIF weights keep their mode
    assert resolve_residual("auto", "mif", None, weights_task="mif") == "none"   # declared authors' MIF weights
    assert resolve_residual("sum", "ivf", ours_mif) == "sum"
    with pytest.raises(ValueError, match="residual='add'"):
        resolve_residual("add", "ivf", None)


def test_minmax_is_the_authors_float32_arithmetic():
    x = np.random.default_rng(3).normal(size=(37, 41)).astype(np.float32) * 3 + 0.1
    lo, hi = np.min(x), np.max(x)
    np.testing.assert_array_equal(minmax_normalize(x), (x - lo) / (hi - lo))  # bit for bit
    assert minmax_normalize(x).dtype == np.float32
    np.testing.assert_array_equal(minmax_normalize(np.full((3, 3), 0.7)), np.zeros((3, 3), np.float32))
