"""``jaxmeta serve``: the HTTP service over a trained run (:mod:`jaxmeta.service.app`).

:func:`add_arguments` fills the subcommand's parser and :func:`main` runs it.
FastAPI and uvicorn are imported inside :func:`main` only, so that ``jaxmeta
--help`` works without them.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

__all__ = ("LOG_LEVELS", "add_arguments", "main")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_INSTALL = "pip install 'jaxmeta[serve]'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jaxmeta serve``."""
    parser.add_argument("--run", required=True, help="the --out folder of jaxmeta train")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1; "
                        "0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    parser.add_argument("--db", help="the SQLite file of users' ratings (default RUN/service.sqlite); kept across "
                        "restarts")
    parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step")
    parser.add_argument("--data-dir", help="the folder of the run's data, in place of the one its config names")
    parser.add_argument("--max-batch", type=int, default=32, help="the most users adapted in one call (default 32)")
    parser.add_argument("--window-ms", type=float, default=5.0,
                        help="how long a request waits for others to be adapted with, in ms (default 5)")
    parser.add_argument("--no-batching", action="store_true", help="adapt every request alone (the baseline)")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="uvicorn's log level (default info)")
    parser.add_argument("--compile-cache", help="a folder to keep compiled programs in, so that a restart skips most "
                        "of the start-up compilation (default RUN/compile-cache; '' for none; the environment's "
                        "JAX_COMPILATION_CACHE_DIR wins)")


def main(args: argparse.Namespace) -> int:
    """Loads the run, compiles the service's shapes, then serves until interrupted; returns 0.

    Raises:
      ImportError: FastAPI or uvicorn is not installed (the message says how to).
      ValueError, jaxmeta.checkpoint.CheckpointError: as
        :meth:`jaxmeta.serve.Recommender.load` and
        :func:`jaxmeta.service.app.create_app`.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise ImportError(f"jaxmeta serve needs FastAPI and uvicorn ({error.name} is missing): {_INSTALL}") from None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: pass a port number from 0 to 65535.")
    import logging

    from jaxmeta.serve import Recommender
    from jaxmeta.service.app import create_app

    _compile_cache(args)
    logging.basicConfig(level=logging.INFO if args.log_level in ("info", "debug", "trace") else logging.WARNING,
                        format="%(levelname)s: %(name)s: %(message)s")
    recommender = Recommender.load(args.run, checkpoint=args.checkpoint, data_dir=args.data_dir)
    db = Path(args.run) / "service.sqlite" if args.db is None else Path(args.db)
    app = create_app(recommender, db, max_batch=args.max_batch, window_ms=args.window_ms,
                     batching=not args.no_batching)
    # The model, the catalogue and the compiled functions live as long as the process: out of the garbage
    # collector's full passes, which otherwise traverse them and stall every request (about 0.3 s each on
    # MeLU, the p99 of the load test).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _compile_cache(args: argparse.Namespace) -> None:
    """Keeps XLA's compiled programs on disk (jax's persistent compilation cache), unless the environment or
    ``--compile-cache ''`` says otherwise: the service compiles every shape it serves at start-up."""
    import os

    import jax

    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    folder = Path(args.run) / "compile-cache" if args.compile_cache is None else args.compile_cache
    if folder:
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
