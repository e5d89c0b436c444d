"""The ``jaxmeta`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from jaxmeta import algorithms
from jaxmeta.reproduce import add_arguments as add_reproduce_arguments
from jaxmeta.reproduce import run_from_args as run_reproduce
from jaxmeta.train import TrainConfig, format_table, run

DEFAULTS = TrainConfig()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxmeta", description="Meta-learning for recommender systems in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="meta-train on the built-in data and compare with the baselines on new users",
        description=(
            "Meta-trains an algorithm on the built-in synthetic data, trains the baselines' global model "
            "for the same steps, and prints the query MSE on held-out new users."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--algo", default=DEFAULTS.algo, choices=sorted(algorithms.META_LEARNERS))
    train.add_argument("--steps", type=int, default=DEFAULTS.steps, help="outer steps")
    train.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="users per outer step")
    train.add_argument("--inner-steps", type=int, default=DEFAULTS.inner_steps, help="inner steps")
    train.add_argument("--inner-lr", type=float, default=DEFAULTS.inner_lr, help="inner SGD learning rate")
    train.add_argument("--outer-lr", type=float, default=DEFAULTS.outer_lr, help="outer Adam learning rate")
    train.add_argument("--clip-norm", type=float, default=DEFAULTS.clip_norm, help="meta-gradient clip")
    train.add_argument("--hidden", type=int, nargs="+", default=list(DEFAULTS.hidden), help="MLP hidden widths")
    train.add_argument("--embed-dim", type=int, default=DEFAULTS.embed_dim, help="embedding width per field")
    train.add_argument("--num-buckets", type=int, default=DEFAULTS.num_buckets, help="support-size buckets")
    train.add_argument("--chunk-size", type=int, default=DEFAULTS.chunk_size, help="users per chunk in a step")
    train.add_argument("--seed", type=int, default=DEFAULTS.seed, help="initialisation and data order")
    train.add_argument("--data-seed", type=int, default=DEFAULTS.data_seed, help="synthetic data")
    train.add_argument("--json", action="store_true", help="print the results as one JSON line, last")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    reproduce = commands.add_parser(
        "reproduce",
        help="meta-train MeLU on MovieLens and write the results table (results.md, results.json)",
        description=(
            "Meta-trains MeLU on MovieLens (ML-1M: MeLU's split, four scenarios; ML-100K: RecBole-MetaRec's "
            "user split) with each algorithm, scores the baselines alongside, and writes the tables."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_reproduce_arguments(reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "reproduce":
        return run_reproduce(args, " ".join(["jaxmeta", *argv]))
    if args.command == "train":
        options = {k: v for k, v in vars(args).items() if k not in ("command", "json", "quiet")}
        try:
            config = TrainConfig(**options)
        except ValueError as error:
            print(f"jaxmeta train: error: {error}", file=sys.stderr)
            return 2
        result = run(config, progress=not args.quiet)
        print(format_table(result), flush=True)
        if args.json:
            print(json.dumps({k: result[k] for k in ("algo", "query_mse", "new_users", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
