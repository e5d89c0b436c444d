"""The HTTP service of ``jaxmeta serve``: a ratings store, a micro-batcher, and the FastAPI app.

The app itself is :func:`jaxmeta.service.app.create_app` (it needs FastAPI:
``pip install 'jaxmeta[serve]'``); the store and the batcher need only the
standard library.
"""

from jaxmeta.service.batcher import MicroBatcher as MicroBatcher
from jaxmeta.service.store import RatingStore as RatingStore

__all__ = ("MicroBatcher", "RatingStore")
