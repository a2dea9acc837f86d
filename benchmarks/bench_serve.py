"""A bounded load run of ``modalign serve`` on loopback: concurrent clients, errors, latency.

Starts the real command (``python -m modalign serve INDEX --port P``) in a subprocess over an
index (by default a synthetic one: ``--items`` unit vectors of width 256 in two modalities,
exact backend, written to a temporary folder), waits for ``/health``, then runs ``--clients``
threads that each send ``--requests`` requests over one keep-alive connection, cycling through
``POST /search`` by id (k = 10, every third one filtered to a modality), ``GET /items/{id}`` and
``GET /health``. Prints one JSON line::

    {"clients", "requests", "errors", "p50_ms", "p90_ms", "p99_ms", "max_ms", "requests_per_s",
     "items", "load_avg"}

An error is any answer other than 200 or a failed connection. Queries by id need no model, so
the run measures the server and the index, not a text encoder.

Usage:
    python benchmarks/bench_serve.py [--clients 8] [--requests 200] [--items 20000] [--index DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def synthetic_index(folder: Path, items: int) -> Path:
    from modalign.index import Index

    rng = np.random.default_rng(0)
    index = Index(backend="exact", model_id="synthetic")
    half = items // 2
    for modality, n in (("image", half), ("text", items - half)):
        x = rng.standard_normal((n, 256), dtype=np.float32)
        ids = [f"{modality}-{i}" for i in range(n)]
        index.add(ids, modality, x, [{"caption": f"{modality} item {i}"} for i in range(n)])
    return index.save(folder / "index")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the server did not answer /health")


def client(port: int, n: int, ids: list[str], seed: int, out: list[tuple[float, bool]]) -> None:
    """``n`` requests over one keep-alive connection; appends (seconds, ok) per request."""
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for i in range(n):
        item = ids[int(rng.integers(len(ids)))]
        if i % 3 == 2:
            method, path, body = "GET", f"/items/{item}", None
        elif i % 10 == 9:
            method, path, body = "GET", "/health", None
        else:
            query = {"id": item, "k": 10, **({"modality": "image"} if i % 3 == 1 else {})}
            method, path, body = "POST", "/search", json.dumps(query).encode()
        t = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            ok = r.status == 200
        except OSError:
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        out.append((time.perf_counter() - t, ok))
    conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--index", type=Path, help="an index folder (default: a synthetic one)")
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.index or synthetic_index(Path(tmp), args.items)
        from modalign.index import Index

        ids = list(Index.load(folder).items)
        port = free_port()
        cmd = [sys.executable, "-m", "modalign", "serve", str(folder), "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        try:
            wait_ready(port, proc)
            results = run_clients(port, ids, args.clients, args.requests)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report(results, args, len(ids))


def run_clients(
    port: int, ids: list[str], clients: int, requests: int
) -> tuple[list[tuple[float, bool]], float]:
    out: list[tuple[float, bool]] = []
    threads = [
        threading.Thread(target=client, args=(port, requests, ids, s, out)) for s in range(clients)
    ]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out, time.perf_counter() - t


def report(
    results: tuple[list[tuple[float, bool]], float], args: argparse.Namespace, items: int
) -> None:
    out, wall = results
    ms = np.array([s for s, _ in out]) * 1000
    print(
        json.dumps(
            {
                "clients": args.clients,
                "requests": len(out),
                "errors": sum(not ok for _, ok in out),
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p90_ms": round(float(np.percentile(ms, 90)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "max_ms": round(float(ms.max()), 1),
                "mean_ms": round(statistics.fmean(ms.tolist()), 1),
                "requests_per_s": round(len(out) / wall, 1),
                "items": items,
                "load_avg": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
