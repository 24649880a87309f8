"""The CDDFuse network and its weights (no file I/O beyond checkpoints, no image handling)."""
from .cddfuse import (
    RESIDUAL_MODES,
    CDDFuse,
    CDDFuseConfig,
    CDDFuseDecoder,
    CDDFuseEncoder,
    cddfuse,
    count_parameters,
    residual_image,
)
from .pretrained import cddfuse_ivf, cddfuse_mif

__all__ = [
    "RESIDUAL_MODES",
    "CDDFuse",
    "CDDFuseConfig",
    "CDDFuseDecoder",
    "CDDFuseEncoder",
    "count_parameters",
    "cddfuse",
    "residual_image",
    "cddfuse_ivf",
    "cddfuse_mif",
]
