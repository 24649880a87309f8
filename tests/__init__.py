"""The test suite (``pytest``); shared fixtures in ``conftest.py``, helpers in ``helpers.py``."""
