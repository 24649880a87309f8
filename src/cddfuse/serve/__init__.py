"""``cddfuse serve``: a web page and an HTTP API for fusing image pairs (needs ``pip install cddfuse[serve]``).

The application lives in :mod:`cddfuse.serve.app` (:func:`~cddfuse.serve.app.create_app`); this package
imports nothing at import time, so that the rest of cddfuse works without the ``serve`` extra.
"""
