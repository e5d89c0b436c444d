"""Load test of the HTTP service (``jaxmeta serve``): throughput and latency under concurrent clients.

The server runs as a subprocess on a free loopback port, once with micro-batching
and once with ``--no-batching`` (each on a fresh SQLite file), and is measured
only once ``/health`` answers (the service compiles its padded shapes before it
opens the port). ``--clients`` concurrent clients (one asyncio loop) then
run each workload for ``--duration`` seconds after ``--warmup`` untimed ones (aiohttp's
client; it costs the shared CPU a fraction of what httpx's does):

- ``ratings+recs``: each client posts one rating of its user (``POST
  /users/{user}/ratings``) and then asks for that user's top-k (``GET
  /users/{user}/recommendations``): an adaptation on the user's new history.
- ``top-k``: each client asks for its user's top-k, the history unchanged (the
  service caches a user's results until their next rating, so after each user's
  first request these are cache hits: reads, not adaptations).

Every client's user is given ``--history`` ratings before timing. A request
counts when it completes inside the timed window; an error is any reply but
200 or any transport failure (timeouts included). One JSON line per workload and
mode: ``req_per_s``, ``p50_ms`` and ``p99_ms`` over its successful requests, ``errors``,
the same per request kind under ``by_request``, and the load average of the
machine just before it; then one line per workload with the ratio of batched to
unbatched throughput. The clients share the machine with the server:
``client_cpu_s`` is the CPU time the load generator itself used in the phase
(warm-up included) and ``server_cpu_s`` the service's.

Usage (from the repository root; ``python -m jaxmeta.bench.load`` from an install)::

    python -m bench.load                                  # trains a short ML-100K run first
    python -m bench.load --run RUN --clients 32 --duration 15
    python -m bench.load --run RUN --modes batched --workloads top-k --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

WORKLOADS = ("ratings+recs", "top-k")
MODES = {"batched": True, "unbatched": False}
# Until ``jaxmeta serve`` is wired into jaxmeta/cli.py, the service's own parser runs it.
_SERVICE_SNIPPET = ("import sys, argparse; from jaxmeta.service import cli; p = argparse.ArgumentParser(); "
                    "cli.add_arguments(p); sys.exit(cli.main(p.parse_args(sys.argv[1:])))")


def jaxmeta_command(*args: str) -> list[str]:
    """``jaxmeta ARGS`` as a command line of this interpreter (whatever the PATH holds)."""
    if importlib.util.find_spec("jaxmeta.__main__") is not None:
        return [sys.executable, "-m", "jaxmeta", *args]
    return [sys.executable, "-c", "import sys; from jaxmeta.cli import main; sys.exit(main())", *args]


def serve_command(*flags: str) -> list[str]:
    """``jaxmeta serve FLAGS``: the one place that says how the service is started."""
    from jaxmeta import cli

    if "serve" in cli.COMMANDS:
        return jaxmeta_command("serve", *flags)
    return [sys.executable, "-c", _SERVICE_SNIPPET, *flags]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def train_run(out: str | os.PathLike, *, data_dir: str | os.PathLike, steps: int = 50) -> Path:
    """A short ``jaxmeta train --data ml-100k --algo maml`` run folder (serving needs one, not a good one)."""
    out = Path(out)
    command = jaxmeta_command("train", "--data", "ml-100k", "--data-dir", str(data_dir), "--algo", "maml",
                              "--steps", str(steps), "--out", str(out), "--quiet")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr.strip()[-4000:]}")
    return out


@dataclass
class Server:
    """A running service: its address, its process and the file its output goes to."""

    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""


def wait_healthy(server: Server, timeout: float) -> None:
    """Polls ``GET /health`` until it answers ``{"status": "ok"}``; raises if the process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"the service exited with status {server.process.returncode} before answering "
                               f"/health; its output ({server.log}):\n{server.log_tail()}")
        try:
            reply = httpx.get(f"{server.url}/health", timeout=5.0)
            if reply.status_code == 200 and reply.json().get("status") == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass  # not listening yet (it compiles first), or not answering yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service did not answer /health within {timeout:.0f} s; its output "
                               f"({server.log}):\n{server.log_tail()}")
        time.sleep(0.25)


def stop(server: Server, *, timeout: float = 30.0) -> int:
    """Ends the service as Ctrl-C would (SIGINT), killing it if it lingers; returns its exit status."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@contextlib.contextmanager
def serve(run: str | os.PathLike, *, db: str | os.PathLike, batching: bool = True, max_batch: int = 32,
          window_ms: float = 5.0, host: str = "127.0.0.1", port: int | None = None,
          log: str | os.PathLike | None = None, log_level: str = "info",
          startup_timeout: float = 900.0) -> Iterator[Server]:
    """Starts ``jaxmeta serve`` on ``run`` as a subprocess, yields it once healthy, stops it on exit.

    The process inherits this environment (so ``JAX_COMPILATION_CACHE_DIR``, when set,
    spares it repeated compilations). Its stdout and stderr go to ``log`` (default: a
    file beside ``db``).
    """
    port = free_port(host) if port is None else port
    flags = ["--run", str(run), "--host", host, "--port", str(port), "--db", str(db), "--max-batch", str(max_batch),
             "--window-ms", str(window_ms), "--log-level", log_level] + ([] if batching else ["--no-batching"])
    log = Path(log) if log is not None else Path(db).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(serve_command(*flags), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    server = Server(f"http://{host}:{port}", process, log)
    try:
        wait_healthy(server, startup_timeout)
        yield server
    finally:
        stop(server)


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (what ``uptime`` prints)."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process ``pid`` has used, from /proc (None where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def catalogue(url: str, limit: int = 1000) -> list[Any]:
    """The ``limit`` most popular item ids of the service (``GET /items``; 1000 at most)."""
    reply = httpx.get(f"{url}/items", params={"q": "", "limit": limit}, timeout=30.0)
    reply.raise_for_status()
    items = [row["item"] for row in reply.json()["items"]]
    if not items:
        raise RuntimeError(f"GET {url}/items gave no items: the run's catalogue is empty.")
    return items


def _ms(seconds: Sequence[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(np.asarray(seconds) * 1e3, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}


async def _measure(url: str, workload: str, users: Sequence[str], items: Sequence[Any], *, duration: float,
                   warmup: float, k: int, seed: int, timeout: float, explain: bool = True) -> dict[str, Any]:
    try:
        import aiohttp  # the load generator's client: a fraction of httpx's CPU per request, which the server shares
    except ImportError:
        raise ImportError("the load test's clients need aiohttp: pip install 'jaxmeta[test]' (or aiohttp).") from None

    kinds = {"POST ratings": [], "GET recommendations": []}
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=len(users))
    async with aiohttp.ClientSession(url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        begin = time.perf_counter() + warmup
        end = begin + duration

        async def call(kind: str, method: str, path: str, **kwargs) -> None:
            start = time.perf_counter()
            try:
                async with http.request(method, path, **kwargs) as reply:
                    await reply.read()
                    failure = None if reply.status == 200 else f"HTTP {reply.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                failure = type(error).__name__
            done = time.perf_counter()
            if begin <= done <= end:
                if failure is None:
                    kinds[kind].append(done - start)
                else:
                    errors[failure] += 1

        async def client(number: int) -> None:
            rng = random.Random(seed * 100_003 + number)
            user = users[number]
            query = {"k": str(k), "explain": str(explain).lower()}
            while time.perf_counter() < end:
                if workload == "ratings+recs":
                    body = {"ratings": [{"item": rng.choice(items), "rating": rng.randint(1, 5)}]}
                    await call("POST ratings", "POST", f"/users/{user}/ratings", json=body)
                await call("GET recommendations", "GET", f"/users/{user}/recommendations", params=query)

        await asyncio.gather(*(client(n) for n in range(len(users))))
    everything = [s for times in kinds.values() for s in times]
    return {"requests": len(everything), "req_per_s": round(len(everything) / duration, 1), **_ms(everything),
            "errors": sum(errors.values()), "error_kinds": dict(errors),
            "by_request": {kind: {"n": len(times), "per_s": round(len(times) / duration, 1), **_ms(times)}
                           for kind, times in kinds.items() if times}}


def give_history(url: str, users: Sequence[str], items: Sequence[Any], *, size: int, seed: int) -> None:
    """Posts ``size`` distinct random ratings for each user (untimed), so every adaptation has a history."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60.0) as http:
        for user in users:
            body = {"ratings": [{"item": item, "rating": rng.randint(1, 5)}
                                for item in rng.sample(list(items), min(size, len(items)))]}
            http.post(f"/users/{user}/ratings", json=body).raise_for_status()


def measure(url: str, workload: str, *, clients: int = 32, duration: float = 15.0, warmup: float = 2.0, k: int = 10,
            history: int = 5, seed: int = 0, timeout: float = 30.0, user_prefix: str = "load",
            server_pid: int | None = None, explain: bool = True) -> dict[str, Any]:
    """One workload against a running service: ``clients`` concurrent clients for ``duration`` seconds.

    ``explain``: the recommendations carry their ``because`` (what the web page asks for; a backward
    pass through the adaptation per item), or not (``explain=false``: adaptation and ranking only).

    With ``server_pid`` the record holds ``server_cpu_s``, the CPU time the service used
    meanwhile (warm-up included, as for ``client_cpu_s``)."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload={workload!r}: pass one of {WORKLOADS}.")
    if clients < 1 or duration <= 0 or warmup < 0:
        raise ValueError(f"clients={clients}, duration={duration}, warmup={warmup}: pass clients >= 1, "
                         "duration > 0 and warmup >= 0.")
    items = catalogue(url)
    users = [f"{user_prefix}-{workload}-{n}" for n in range(clients)]
    give_history(url, users, items, size=history, seed=seed)
    load = load_average()
    cpu, server_cpu = time.process_time(), None if server_pid is None else cpu_seconds(server_pid)
    result = asyncio.run(_measure(url, workload, users, items, duration=duration, warmup=warmup, k=k, seed=seed,
                                  timeout=timeout, explain=explain))
    if server_cpu is not None:
        after = cpu_seconds(server_pid)
        result["server_cpu_s"] = None if after is None else round(after - server_cpu, 2)
    return {"bench": "load", "workload": workload, "clients": clients, "duration_s": duration, "k": k,
            "explain": explain,
            **result, "load_avg_before": load, "cpus": os.cpu_count(),
            "client_cpu_s": round(time.process_time() - cpu, 2)}


def ratios(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batched over unbatched throughput, per workload measured both ways."""
    out = []
    for workload in WORKLOADS:
        pair = {r["batching"]: r for r in records if r["workload"] == workload}
        if True in pair and False in pair and pair[False]["req_per_s"] > 0:
            out.append({"bench": "load", "workload": workload, "clients": pair[True]["clients"],
                        "explain": pair[True].get("explain", True),
                        "ratio_batched_over_unbatched": round(pair[True]["req_per_s"] / pair[False]["req_per_s"], 2),
                        "batched_req_per_s": pair[True]["req_per_s"], "unbatched_req_per_s": pair[False]["req_per_s"]})
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="a trained run folder to serve (default: train a short ML-100K run first)")
    parser.add_argument("--data-dir", default=os.environ.get("JAXMETA_DATA", "../shared/data"),
                        help="folder holding ml-100k/, for the default run (default $JAXMETA_DATA or ../shared/data)")
    parser.add_argument("--train-steps", type=int, default=50, help="outer steps of the default run (default: 50)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default: 32)")
    parser.add_argument("--duration", type=float, default=15.0, help="timed seconds per workload (default: 15)")
    parser.add_argument("--warmup", type=float, default=2.0, help="untimed seconds before each (default: 2)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=tuple(MODES),
                        help="batched: micro-batching on; unbatched: --no-batching (default: both)")
    parser.add_argument("--max-batch", type=int, default=32, help="the service's --max-batch (default: 32)")
    parser.add_argument("--window-ms", type=float, default=5.0, help="the service's --window-ms (default: 5)")
    parser.add_argument("--k", type=int, default=10, help="items per recommendation (default: 10)")
    parser.add_argument("--no-explain", dest="explain", action="store_false",
                        help="ask for recommendations without their because (explain=false)")
    parser.add_argument("--history", type=int, default=5, help="ratings per user before timing (default: 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-level", default="warning",
                        help="the service's --log-level (default: warning, so no access log line per request)")
    parser.add_argument("--work-dir", help="where databases and server logs go (default: a temporary folder)")
    parser.add_argument("--startup-timeout", type=float, default=900.0,
                        help="seconds to wait for /health, compilation included (default: 900)")


def main(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="jaxmeta-load-")))
        run = Path(args.run) if args.run else train_run(work / "run", data_dir=args.data_dir,
                                                        steps=args.train_steps)
        records = []
        for mode in args.modes:
            batching = MODES[mode]
            with serve(run, db=work / f"{mode}.sqlite", batching=batching, max_batch=args.max_batch,
                       window_ms=args.window_ms, log_level=args.log_level,
                       startup_timeout=args.startup_timeout) as server:
                for workload in args.workloads:
                    record = measure(server.url, workload, clients=args.clients, duration=args.duration,
                                     warmup=args.warmup, k=args.k, history=args.history, seed=args.seed,
                                     user_prefix=mode, server_pid=server.process.pid, explain=args.explain)
                    record.update(batching=batching, max_batch=args.max_batch, window_ms=args.window_ms)
                    records.append(record)
                    print(json.dumps(record), flush=True)
        for record in ratios(records):
            print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.load", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
