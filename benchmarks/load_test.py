"""Bounded load test of `agelens serve` on loopback: concurrent clients, good and bad requests interleaved.

usage: python benchmarks/load_test.py [--requests 200] [--concurrency 50] [--bad-every 10] [--out docs/load_test.json]
Starts the server (shipped models) in a subprocess on a free 127.0.0.1 port, posts the bundled photo REQUESTS times
from CONCURRENCY async clients, every BAD_EVERY-th request replaced by a bad one (oversized body, corrupt JPEG,
text/plain, bad base64), then reports throughput, p50/p95 latency, expected 4xx separately from unexpected
failures, and the server's peak RSS (VmHWM). Traffic goes to loopback only; the run stops after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx
import numpy as np

from agelens.utils import atomic_write_json

BAD_KINDS = ("oversized", "corrupt", "text_plain", "bad_base64")
EXPECTED = {"ok": 200, "oversized": 413, "corrupt": 422, "text_plain": 415, "bad_base64": 422}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in bytes (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) * 1024
    return out


def start_server(port: int, max_upload_mb: float, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "agelens.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-upload-mb", str(max_upload_mb), "--log-level", "warning"]
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "GLOG_minloglevel": "3", "TF_CPP_MIN_LOG_LEVEL": "3"})


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            r = httpx.get(url + "/healthz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    sys.exit(f"server not ready after {timeout:.0f} s")


def make_request(kind: str, photo: bytes, limit_bytes: int) -> dict:
    if kind == "ok":
        return {"files": {"file": ("astronaut.jpg", photo, "image/jpeg")}}
    if kind == "oversized":
        return {"content": b"\xff\xd8" + b"\0" * (limit_bytes + 64 * 1024), "headers": {"content-type": "image/jpeg"}}
    if kind == "corrupt":
        return {"files": {"file": ("broken.jpg", photo[: len(photo) // 3], "image/jpeg")}}
    if kind == "text_plain":
        return {"files": {"file": ("notes.txt", b"not an image", "text/plain")}}
    return {"json": {"image": base64.b64encode(photo).decode()[:-3] + "!!"}}


async def run_load(url: str, kinds: list[str], photo: bytes, limit_bytes: int, concurrency: int,
                   timeout: float, max_seconds: float) -> tuple[list[dict], float]:
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for i, k in enumerate(kinds):
        queue.put_nowait((i, k))
    results: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    i, kind = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                rec = {"i": i, "kind": kind, "expected": EXPECTED[kind]}
                try:
                    r = await client.post("/v1/predict", **make_request(kind, photo, limit_bytes))
                    rec["status"] = r.status_code
                    if r.status_code == 200:
                        rec["faces"] = len(r.json()["faces"])
                except httpx.HTTPError as e:
                    rec["status"], rec["exception"] = None, f"{type(e).__name__}: {e}"
                rec["latency_s"] = time.perf_counter() - t
                results.append(rec)

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=max_seconds)
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - t0
    return results, wall


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def summarise(results: list[dict], wall: float, n_planned: int) -> dict:
    ok = [r for r in results if r["kind"] == "ok" and r["status"] == 200]
    expected_4xx = [r for r in results if r["kind"] != "ok" and r["status"] == r["expected"]]
    unexpected = [r for r in results if r["status"] != r["expected"] or (r["kind"] == "ok" and not r.get("faces"))]
    lat_ok = [r["latency_s"] for r in ok]
    lat_bad = [r["latency_s"] for r in expected_4xx]
    return {
        "planned": n_planned, "completed": len(results), "wall_s": round(wall, 2),
        "throughput_req_s": round(len(results) / wall, 2),
        "predictions_per_s": round(len(ok) / wall, 2),
        "ok_200": len(ok),
        "expected_4xx": len(expected_4xx),
        "expected_4xx_by_kind": {k: sum(r["kind"] == k for r in expected_4xx) for k in BAD_KINDS},
        "unexpected_failures": len(unexpected),
        "unexpected_examples": [{k: r.get(k) for k in ("kind", "status", "expected", "exception")} for r in unexpected[:5]],
        "latency_ms_ok": {"p50": pct(lat_ok, 50), "p95": pct(lat_ok, 95), "max": pct(lat_ok, 100)},
        "latency_ms_rejected": {"p50": pct(lat_bad, 50), "p95": pct(lat_bad, 95), "max": pct(lat_bad, 100)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--bad-every", type=int, default=10, help="every N-th request is a bad one (0: none)")
    ap.add_argument("--max-upload-mb", type=float, default=2.0, help="server's upload limit")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="stop the load after this long")
    ap.add_argument("--out", type=Path, default=Path("docs/load_test.json"))
    a = ap.parse_args()
    if a.requests < 1 or a.concurrency < 1:
        sys.exit("--requests and --concurrency must be >= 1")

    photo = (resources.files("agelens") / "assets" / "astronaut.jpg").read_bytes()
    limit = int(a.max_upload_mb * 2**20)
    kinds = ["ok"] * a.requests
    if a.bad_every > 0:
        for j, i in enumerate(range(a.bad_every - 1, a.requests, a.bad_every)):
            kinds[i] = BAD_KINDS[j % len(BAD_KINDS)]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkdtemp(prefix="agelens-load-")) / "server.log"
    t_start = time.perf_counter()
    proc = start_server(port, a.max_upload_mb, log_path)
    try:
        health = wait_ready(url, proc, 180, log_path)
        startup_s = time.perf_counter() - t_start
        mem_idle = proc_status(proc.pid)
        load_before = os.getloadavg()
        results, wall = asyncio.run(run_load(url, kinds, photo, limit, a.concurrency, a.timeout, a.max_seconds))
        mem = proc_status(proc.pid)
        alive = proc.poll() is None and httpx.get(url + "/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    report = {
        "command": " ".join(["python", "benchmarks/load_test.py", *sys.argv[1:]]),
        "requests": a.requests, "concurrency": a.concurrency, "bad_every": a.bad_every,
        "server": {"models": health["models"], "max_upload_mb": a.max_upload_mb, "startup_s": round(startup_s, 1),
                   "rss_idle_mb": round(mem_idle["VmRSS"] / 2**20, 1), "peak_rss_mb": round(mem["VmHWM"] / 2**20, 1),
                   "alive_after": alive},
        **summarise(results, wall, len(kinds)),
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "loadavg_before": [round(x, 2) for x in load_before], "python": platform.python_version()},
    }
    atomic_write_json(a.out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "unexpected_examples"}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
