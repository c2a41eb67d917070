"""The controller on a real Redis Cluster (3 masters + 3 replicas of Debian's redis-server on
loopback): the cache works across shards, and killing a master under load gives no client error,
entries on the other shards are still served, and the cache resumes once its replica is promoted."""

from __future__ import annotations

import threading
import time

import httpx
import redis


QUESTIONS = [  # distinct enough that none is a semantic hit for another
    "How do volcanoes form?", "Who painted the Sistine Chapel ceiling?", "What causes the northern lights?",
    "How many bones are in the human body?", "Why is the sky blue?", "What is the speed of sound in water?",
    "Who invented the telephone?", "How does a refrigerator keep food cold?", "What language is spoken in Brazil?",
    "When did the Berlin Wall fall?", "How do bees make honey?", "What is the tallest tree species?",
    "Which planet has the most moons?", "How are diamonds formed?", "Who wrote the Odyssey?",
    "What is photosynthesis?", "How deep is the Mariana Trench?", "What currency does Japan use?",
    "Why do cats purr?", "How long does it take light to reach Earth from the Sun?",
    "What is the largest desert on Earth?", "Who discovered gravity?", "How do vaccines train the immune system?",
    "What is the boiling point of ethanol?",
]


def ask(url, content):
    return httpx.post(url + "/v1/chat/completions", timeout=30, json={
        "model": "m", "temperature": 0, "messages": [{"role": "user", "content": content}]})


def test_cache_on_a_cluster_survives_a_master_failover(redis_cluster, sim_backend, encoder, policies_path):
    from tests.conftest import ControllerHandle

    ctl = ControllerHandle(policies_path, [sim_backend], redis_cluster.url, encoder)
    try:
        questions = QUESTIONS
        assert all(ask(ctl.url, q).headers["x-cache"] == "MISS" for q in questions)
        assert all(ask(ctl.url, q).headers["x-cache"] == "HIT" for q in questions)
        client = redis.RedisCluster.from_url(redis_cluster.url)
        key_of = {client.hget(k, "query").decode(): k.decode() for k in client.scan_iter("va:doc:*")}
        client.close()
        where = {q: redis_cluster.master_of(k) for q, k in key_of.items()}
        assert len(where) == 24 and len(set(where.values())) == 3  # spread over the three shards
        # The worst shard to lose: the one that also holds the change feed (every store publishes
        # to it). A question of that shard is the one that must be served again after the failover.
        victim = redis_cluster.master_of("{va}:feed")
        lost = next(q for q in questions if where[q] == victim)
        elsewhere = [q for q in questions if where[q] != victim]

        errors, stop = [], threading.Event()

        def load() -> None:  # traffic all through the failover
            i = 0
            while not stop.is_set():
                reply = ask(ctl.url, questions[i % len(questions)])
                if reply.status_code != 200:
                    errors.append(reply.status_code)
                i += 1

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        redis_cluster.kill(victim)
        time.sleep(0.5)
        during = [ask(ctl.url, q).headers["x-cache"] for q in elsewhere]
        assert during.count("HIT") >= len(elsewhere) // 2, during  # other shards still served

        deadline = time.monotonic() + 90
        while redis_cluster.master_of(key_of[lost]) in (None, victim) and time.monotonic() < deadline:
            time.sleep(0.2)  # the victim is flagged failed and its replica takes over its slots
        assert redis_cluster.master_of(key_of[lost]) not in (None, victim), "no replica was promoted"
        deadline = time.monotonic() + 30
        resumed = None
        while time.monotonic() < deadline:  # a question of the failed shard is cached and hit again
            ask(ctl.url, lost)
            if ask(ctl.url, lost).headers["x-cache"] == "HIT":
                resumed = time.monotonic()
                break
            time.sleep(0.2)
        stop.set()
        worker.join(30)
        assert resumed is not None, "the cache did not resume after the failover"
        assert errors == []
    finally:
        ctl.stop()
