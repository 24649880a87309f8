"""Sample image pairs shipped with the package (about 160 KB), to try fusion without any data.

* ``"tno"`` (task ``ivf``): TNO scene 19, infrared and visible, both gray, 360x270;
* ``"roadscene"`` (task ``ivf``): RoadScene FLIR_08021, infrared (gray) and visible (colour), 446x291;
* ``"mri-pet"`` (task ``mif``): Harvard Whole Brain Atlas, PET (colour) and MRI (gray), 256x256.

Where each image comes from, and on what terms, is in ``README.txt`` beside the images. On the
command line: ``cddfuse fuse --example tno -o fused.png``.

Example:
    >>> from cddfuse import data
    >>> data.names()
    ('tno', 'roadscene', 'mri-pet')
    >>> ir, vis = data.load("roadscene")
    >>> ir.shape, vis.shape, ir.dtype.name
    ((291, 446), (291, 446, 3), 'float32')
    >>> data.task("mri-pet")
    'mif'
    >>> [p.name for p in data.paths("mri-pet")]
    ['mri_pet_pet.png', 'mri_pet_mri.png']
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UsageError

__all__ = ["names", "paths", "load", "task", "FOLDER"]

#: The folder that holds the sample images (inside the installed package).
FOLDER = Path(__file__).resolve().parent


class _Sample(NamedTuple):
    task: str
    first: str  # infrared / functional (CT, PET, SPECT)
    second: str  # visible / MRI


_SAMPLES: dict[str, _Sample] = {
    "tno": _Sample("ivf", "tno_ir.png", "tno_vi.png"),
    "roadscene": _Sample("ivf", "roadscene_ir.jpg", "roadscene_vi.jpg"),
    "mri-pet": _Sample("mif", "mri_pet_pet.png", "mri_pet_mri.png"),
}


def names() -> tuple[str, ...]:
    """The names of the sample pairs: ``("tno", "roadscene", "mri-pet")``."""
    return tuple(_SAMPLES)


def _sample(name: str) -> _Sample:
    try:
        return _SAMPLES[name]
    except (KeyError, TypeError):
        raise UsageError(f"no sample pair named {name!r}; the samples are {', '.join(names())}") from None


def paths(name: str) -> tuple[Path, Path]:
    """The two files of a sample pair: first the infrared / functional image, then the visible / MRI one.

    Raises:
        UsageError: ``name`` is not one of :func:`names` (the message lists them).
    """
    s = _sample(name)
    return FOLDER / s.first, FOLDER / s.second


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A sample pair read with :func:`cddfuse.io.image.read_image`: float32 in [0, 1], ``(H, W)`` for
    gray and ``(H, W, 3)`` RGB for colour images, infrared / functional first.

    Raises:
        UsageError: ``name`` is not one of :func:`names`.
    """
    from ..io.image import read_image

    first, second = paths(name)
    return read_image(first), read_image(second)


def task(name: str) -> str:
    """The fusion task of a sample pair: ``"ivf"`` (infrared-visible) or ``"mif"`` (medical).

    Raises:
        UsageError: ``name`` is not one of :func:`names`.
    """
    return _sample(name).task
