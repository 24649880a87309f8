"""Number types for the command line's options: every float option refuses NaN and infinities (``nan``
compares false with every bound, so a check like ``value < 0`` lets it through), and whole numbers are
bounded so that a typo cannot ask for a million worker processes."""
from __future__ import annotations

import argparse
import math
from typing import Callable

__all__ = ["finite_float", "whole"]


def finite_float(low: float | None = None, high: float | None = None, *,
                 low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite float within ``[low, high]`` (``(low, high]`` with ``low_open``).

    Example:
        >>> finite_float(0, 1)("0.25")
        0.25
        >>> finite_float(0, 1)("nan")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a finite number, got 'nan'
    """
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
        return value
    return parse


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in ``[low, high]``.

    Example:
        >>> whole(1, 64)("8")
        8
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high:,}, got {text}")
        return value
    return parse
