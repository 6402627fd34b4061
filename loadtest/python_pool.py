#!/usr/bin/env python3
"""The reference of issue 13's SHA-256 drain: a plain Python task queue on the same broker and
Redis, without dtee. N jobs are queued (each names its own 1 MiB blob in Redis, byte i =
(31*i + job index) mod 256, as `dtee-loadtest --workload sha256` makes them); then a pool of
worker processes starts, each consuming with a prefetch, reading its blob from Redis, hashing
it with hashlib (OpenSSL), publishing the digest with a publisher confirm and acking. Timed from
the pool's start until every digest is back and checked. Prints one line (and --json).

    clients/python/.venv/bin/python loadtest/python_pool.py --jobs 500 --processes 2

Compare with `dtee-loadtest jobs --workload sha256 --jobs 500 --drain-worker ...` in the same
session (loadtest/drain.sh runs both).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import time

import pika
import redis

AMQP_URL = os.environ.get("DTEE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
REDIS_URL = os.environ.get("DTEE_REDIS_URL", "redis://127.0.0.1:6379")


def blob(index: int) -> bytes:
    """1 MiB, byte i = (31*i + index) mod 256 (period 256 in i)."""
    period = bytes((31 * i + index) % 256 for i in range(256))
    return period * 4096


def worker(jobs_queue: str, results_queue: str, prefetch: int) -> None:
    store = redis.Redis.from_url(REDIS_URL)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_qos(prefetch_count=prefetch)

    def handle(ch, method, properties, body):
        job = json.loads(body)
        digest = hashlib.sha256(store.get(job["blob"])).hexdigest()
        ch.basic_publish("", results_queue, json.dumps({"index": job["index"], "digest": digest}).encode(),
                         pika.BasicProperties(delivery_mode=2))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(jobs_queue, handle)
    channel.start_consuming()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    run = f"pypool-{os.getpid()}-{int(time.time())}"
    jobs_queue, results_queue = f"{run}.jobs", f"{run}.results"
    store = redis.Redis.from_url(REDIS_URL)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    for queue in (jobs_queue, results_queue):
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    expected = {}
    try:
        for index in range(args.jobs):
            data = blob(index)
            key = f"{run}:blob:{index}"
            store.set(key, data)
            expected[index] = hashlib.sha256(data).hexdigest()
            channel.basic_publish("", jobs_queue, json.dumps({"index": index, "blob": key}).encode(),
                                  pika.BasicProperties(delivery_mode=2))
        started = time.monotonic()
        pool = [multiprocessing.Process(target=worker, args=(jobs_queue, results_queue, args.prefetch), daemon=True)
                for _ in range(args.processes)]
        for process in pool:
            process.start()
        latencies = []
        for method, _properties, body in channel.consume(results_queue, inactivity_timeout=120):
            if method is None:
                print("python_pool: no result for 120 s", file=sys.stderr)
                return 1
            result = json.loads(body)
            if result["digest"] != expected.pop(result["index"], None):
                print(f"python_pool: wrong digest for job {result['index']}", file=sys.stderr)
                return 1
            latencies.append(time.monotonic() - started)
            channel.basic_ack(method.delivery_tag)
            if not expected:
                break
        elapsed = time.monotonic() - started
        channel.cancel()
        for process in pool:
            process.terminate()
        report = {
            "mode": "python-pool/sha256/drain",
            "count": args.jobs,
            "processes": args.processes,
            "seconds": round(elapsed, 3),
            "per_second": round(args.jobs / elapsed, 1),
            "latency_ms_p50": round(statistics.median(latencies) * 1000, 1),
        }
        print(f"{report['mode']}: {args.jobs} jobs, {args.processes} processes, {elapsed:.2f} s, "
              f"{report['per_second']} jobs/s, p50 {report['latency_ms_p50']} ms")
        if args.json:
            print(json.dumps(report))
        return 0
    finally:
        for queue in (jobs_queue, results_queue):
            channel.queue_delete(queue)
        keys = [f"{run}:blob:{index}" for index in range(args.jobs)]
        for start in range(0, len(keys), 500):
            store.delete(*keys[start:start + 500])
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
