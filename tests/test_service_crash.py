"""The service under ``kill -9``: every rating it acknowledged (200) is in the database after a restart.

Clients post ratings concurrently and record each one the server acknowledged;
the server is killed with SIGKILL in the middle of that load, restarted on the
same ``--db``, and every acknowledged rating must be there: in the SQLite file
and in the ``total`` the restarted server reports. A client never rates an item
twice, so a rating that was written but not acknowledged (in flight at the kill)
cannot replace an acknowledged one, and the check is exact.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from jaxmeta.bench import load

CLIENTS = 8
KILL_AFTER = 150  # acknowledged requests before the kill


@pytest.mark.slow
def test_every_acknowledged_rating_survives_kill_9(served_run, tmp_path):
    db = tmp_path / "ratings.sqlite"
    acked: dict[str, dict[int, float]] = {f"crash-{n}": {} for n in range(CLIENTS)}
    acks, refused, broken = [0], [], []  # acknowledged requests; non-200 replies; transport errors before the kill
    lock, killed = threading.Lock(), threading.Event()

    with load.serve(served_run, db=db) as server:
        items = load.catalogue(server.url)

        def client(n: int) -> None:
            rng, user = random.Random(n), f"crash-{n}"
            todo = rng.sample(items, len(items))  # each item once: never re-rated
            with httpx.Client(base_url=server.url, timeout=30.0) as http:
                while todo and not killed.is_set():
                    ratings = [(todo.pop(), float(rng.randint(1, 5))) for _ in range(min(rng.randint(1, 3), len(todo)))]
                    body = {"ratings": [{"item": item, "rating": rating} for item, rating in ratings]}
                    try:
                        reply = http.post(f"/users/{user}/ratings", json=body)
                    except httpx.HTTPError as error:
                        if not killed.is_set():
                            broken.append(repr(error))
                        return
                    with lock:
                        if reply.status_code == 200:
                            acked[user].update(ratings)
                            acks[0] += 1
                        else:
                            refused.append((reply.status_code, reply.text))

        with ThreadPoolExecutor(CLIENTS) as pool:
            running = [pool.submit(client, n) for n in range(CLIENTS)]
            deadline = time.monotonic() + 120
            while acks[0] < KILL_AFTER and time.monotonic() < deadline and not any(f.done() for f in running):
                time.sleep(0.01)
            os.kill(server.process.pid, signal.SIGKILL)  # mid-load: the clients are still posting
            killed.set()
            server.process.wait()
            for future in running:
                future.result()

    assert server.process.returncode == -signal.SIGKILL
    assert not refused, f"the server refused ratings before the kill: {refused[:3]}"
    assert not broken, f"requests failed before the kill: {broken[:3]}"
    assert acks[0] >= KILL_AFTER, f"only {acks[0]} ratings were acknowledged in 120 s before the kill"
    print(f"killed after {acks[0]} acknowledged requests ({sum(map(len, acked.values()))} ratings)")

    # the restart reads the database the killed server wrote
    with load.serve(served_run, db=db) as server, httpx.Client(base_url=server.url, timeout=30.0) as http:
        for user, mine in acked.items():
            fresh = next(item for item in items if item not in mine)  # may be one in flight at the kill
            reply = http.post(f"/users/{user}/ratings", json={"ratings": [{"item": fresh, "rating": 3}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["total"] >= len(mine) + 1, (user, reply.json(), len(mine))
            assert http.get(f"/users/{user}/recommendations", params={"k": 5}).status_code == 200

    with contextlib.closing(sqlite3.connect(db)) as con:
        stored = {(user, item): rating for user, item, rating in con.execute("SELECT user, item, rating FROM ratings")}
    lost = [(user, item, rating) for user, mine in acked.items() for item, rating in mine.items()
            if stored.get((user, item)) != rating]
    assert not lost, f"{len(lost)} of {sum(map(len, acked.values()))} acknowledged ratings lost: {lost[:5]}"
