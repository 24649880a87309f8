"""The fusion pipeline: sources -> luminance -> network -> normalisation -> colour."""
from .fuser import METHODS, Fuser, FusionResult, fuse, minmax_normalize, resolve_device, resolve_residual

__all__ = ["METHODS", "Fuser", "FusionResult", "fuse", "minmax_normalize", "resolve_device", "resolve_residual"]
