"""cddfuse: CDDFuse multi-modality image fusion, exact to the paper, fast and practical."""
__version__ = "0.1.0"
