"""Shared fixtures: a tiny smooth model and random ragged tasks."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmeta import algorithms, cli
from jaxmeta.models import Model, Stage
from jaxmeta.tasks import RaggedTasks, pad_tasks

# One persistent XLA compilation cache for the session and every process it starts (jax reads
# JAX_COMPILATION_CACHE_DIR from the environment): many tests and subprocesses compile the same
# programs, and a rerun (the slow suite after the default one, a second local run) finds them all.
# An entry is keyed by the program, the compile options, XLA flags and the jax version, and holds
# the executable a fresh compilation gives, so results do not change. Every compilation is stored
# (the suite's programs mostly compile in under jax's default threshold of 1 s). In .pytest_cache,
# so `pytest --cache-clear` empties it; JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                               str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
_CACHE_FROM = os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", _CACHE or None)
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(_CACHE_FROM))


def pytest_configure(config):
    """The default suite (``-m 'not slow'``) compiles with ``jax_disable_most_optimizations``: most of
    its time on a fresh checkout is XLA compiling small programs once each, and its checks (references,
    finite differences, loop equivalence, bitwise resume) compare programs compiled alike. Set in the
    environment too, so the ``jaxmeta`` processes that tests start compile as the session does and
    bitwise comparisons with them hold. The slow suite (long runs on real data) compiles as users do. An
    explicit ``JAX_DISABLE_MOST_OPTIMIZATIONS`` in the environment wins (jax read it when imported)."""
    if config.getoption("markexpr", "").strip() == "not slow" and "JAX_DISABLE_MOST_OPTIMIZATIONS" not in os.environ:
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
        jax.config.update("jax_disable_most_optimizations", True)


# Like equinox's tests, implicit rank promotion is an error. (Strict dtype promotion
# is not set: optax's own Adam mixes Python floats with its int32 step count.)
jax.config.update("jax_numpy_rank_promotion", "raise")

VOCAB = (3, 5)

# tests/scripts holds programs that tests run in their own processes (a forced 4-device CPU), not test
# modules: --doctest-modules would import them into the session, and their settings with them.
collect_ignore = ["scripts"]

# The real MovieLens files are read in place, never copied (their licence forbids it).
DATA = Path(os.environ.get("JAXMETA_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def real(sub: str) -> Path:
    """``DATA / sub``, or skip the test with the reason when that folder is absent."""
    path = DATA / sub
    if not path.is_dir():
        pytest.skip(f"real data absent: {path} not found (set JAXMETA_DATA to the folder holding ml-100k/ and ml-1m/)")
    return path


def tiny_model(dtype=jnp.float32, *, staged: bool = False) -> Model:
    """Two embedded fields (slow) -> tanh layer -> linear head (fast). Smooth, so
    finite differences are accurate everywhere. ``staged``: with the embedding
    lookup declared as the model's input stage and the tanh layer as the dense
    layer after it (``Model.stage``)."""

    def init(key):
        k = jax.random.split(key, 4)
        return {
            "emb": [0.5 * jax.random.normal(k[0], (VOCAB[0], 2), dtype), 0.5 * jax.random.normal(k[1], (VOCAB[1], 2), dtype)],
            "body": {"w": jax.random.normal(k[2], (4, 3), dtype) * 0.7, "b": jnp.full((3,), 0.1, dtype)},
            "head": {"w": jax.random.normal(k[3], (3, 1), dtype) * 0.7, "b": jnp.full((1,), 0.2, dtype)},
        }

    def embed(params, x):
        return jnp.concatenate([params["emb"][0][x[:, 0]], params["emb"][1][x[:, 1]]], axis=-1)

    def apply_embedded(params, h):
        return after_dense(params, h @ params["body"]["w"] + params["body"]["b"][None, :])

    def after_dense(params, z):
        return (jnp.tanh(z) @ params["head"]["w"] + params["head"]["b"][None, :])[:, 0]

    stage = Stage(embed, apply_embedded, is_embedding=lambda p: p[0] == "emb", dense=("body",), after_dense=after_dense)
    return Model(init, lambda params, x: apply_embedded(params, embed(params, x)), is_fast=lambda p: p[0] != "emb",
                 is_head=lambda p: p[0] == "head", stage=stage if staged else None)


def random_tasks(num_users: int, *, seed: int = 0, support=(2, 6), query=(1, 4), dtype=np.float32) -> RaggedTasks:
    """Users with ragged support/query sets of random ids and ratings."""
    rng = np.random.default_rng(seed)

    def rows(n):
        x = np.stack([rng.integers(VOCAB[0], size=n), rng.integers(VOCAB[1], size=n)], axis=1).astype(np.int32)
        return x, rng.normal(size=n).astype(dtype)

    parts = [rows(rng.integers(support[0], support[1] + 1)) + rows(rng.integers(query[0], query[1] + 1)) for _ in range(num_users)]
    sx, sy, qx, qy = (list(f) for f in zip(*parts))
    return RaggedTasks(sx, sy, qx, qy)


def learner_factories(outer_optimizer, inner_optimizer=0.3, inner_steps=2, **extra):
    """Every algorithm, meta-learners and baselines, with comparable settings."""
    common = dict(outer_optimizer=outer_optimizer, **extra)
    inner = dict(inner_optimizer=inner_optimizer, inner_steps=inner_steps, **common)
    return {
        "maml": lambda m: algorithms.maml(m, **inner),
        "maml_remat": lambda m: algorithms.maml(m, remat=True, **inner),
        "fomaml": lambda m: algorithms.fomaml(m, **inner),
        "reptile": lambda m: algorithms.reptile(m, **inner),
        "anil": lambda m: algorithms.anil(m, **inner),
        "metasgd": lambda m: algorithms.metasgd(m, **inner),
        "imaml": lambda m: algorithms.imaml(m, reg=2.0, cg_steps=8, **inner),
        "no_adaptation": lambda m: algorithms.no_adaptation(m, **common),
        "finetune": lambda m: algorithms.finetune(m, **inner),
    }


ALGORITHMS = tuple(learner_factories(optax.sgd(1.0)))


def meta_grad(learner, state, batch):
    """The meta-gradient a learner applies, read off one step of ``optax.sgd(1.0)``
    (``new = old - grad``), and the step's metrics."""
    new, metrics = learner.step(state, batch)
    grads = jax.tree.map(lambda a, b: a - b, (state.params, state.hyper), (new.params, new.hyper))
    return grads, metrics


def assert_batch_equals_loop(learner, state, users, batch, *, rtol=1e-4, atol=1e-6):
    """The meta-gradient and loss of ``batch`` (``users`` padded) equal the mean over
    a loop of one-user batches of the same shape."""
    grads, metrics = meta_grad(learner, state, batch)
    one = lambda u: pad_tasks(users.take([u]), support_size=batch.support_size, query_size=batch.query_size)  # noqa: E731
    singles = [meta_grad(learner, state, one(u)) for u in range(len(users))]
    mean = jax.tree.map(lambda *g: sum(g) / len(g), *[g for g, _ in singles])
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(mean)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    np.testing.assert_allclose(metrics["loss"], np.mean([m["loss"] for _, m in singles]), rtol=1e-5)
    assert int(metrics["tasks"]) == len(users)
    return grads


@pytest.fixture
def tasks():
    return random_tasks(7, seed=1)


@pytest.fixture
def batch(tasks):
    return pad_tasks(tasks)


# ----------------------------------------------------------------------------- the jaxmeta command

RUN_SETTINGS = ("--steps", "4", "--eval-every", "2", "--checkpoint-every", "2", "--batch-size", "8",
                "--num-buckets", "1", "--quiet")


class Ran(NamedTuple):
    """What one ``jaxmeta`` command gave."""

    returncode: int
    stdout: str
    stderr: str


def jaxmeta(*args, cwd: Path | None = None) -> Ran:
    """``jaxmeta ARGS`` in this process: exit status, stdout, stderr."""
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as exit:
                code = exit.code
    finally:
        os.chdir(here)
    return Ran(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A 4-step ``jaxmeta train`` run on the built-in data, validated and saved at steps 2 and 4 (read-only:
    tests that change it copy it first)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    done = jaxmeta("train", "--out", run, *RUN_SETTINGS)
    assert done.returncode == 0, done.stderr
    return run


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> Path:
    """A short ``jaxmeta train --data ml-100k --algo maml`` run on the real ML-100K, for the tests that
    serve it over HTTP (read-only; skips when the data are absent). Short on purpose: they test serving,
    not the quality of its recommendations."""
    data = real("ml-100k")
    run = tmp_path_factory.mktemp("served") / "run"
    done = jaxmeta("train", "--data", "ml-100k", "--data-dir", data.parent, "--algo", "maml", "--steps", "50",
                   "--num-buckets", "1", "--out", run, "--quiet")
    assert done.returncode == 0, done.stderr
    return run
