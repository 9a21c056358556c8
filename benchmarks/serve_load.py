"""Load test of `mmfuse serve`: throughput, latency, error codes and memory under concurrency.

    .venv/bin/python benchmarks/serve_load.py [--clients 50] [--seconds 30] [--model DIR]
    .venv/bin/python benchmarks/serve_load.py --clients 8 --seconds 5       # smoke test

Trains a small image+audio+text model with the library's default encoders on generated shapes
data (or takes --model DIR), starts the server on loopback in a subprocess (one worker, no
access log), then:

1. Sequential: --sequential single predictions, one after another, of one image (64×64 PNG)
   plus one 1 s audio clip (16 kHz WAV); the issue's target is p50 < 50 ms on this CPU.
2. Load: --clients concurrent clients for --seconds (at most --max-requests requests in all),
   each picking at random a valid upload (the same image + audio, --valid-share of requests)
   or a bad one: an empty file, a WAV sent as image, random bytes, or a body over the server's
   --max-upload-kb. Latency is client-side (send to full answer).

3. With --slow-clients N, N more clients connect during the load and never finish a request:
   a third send nothing, a third trickle header lines, a third trickle a body, one byte every
   0.5 s. The server (--header-timeout, --body-timeout) must answer each a 408 and disconnect
   it while the load is served; its --max-connections is set to fit everyone.

Prints requests/s, p50/p95/p99 latency of the valid requests, the answers by kind and status,
the batching the server did, its RSS (start, peak, end) and what became of the slow clients.
Exits 1 on any 5xx or transport error, or on a slow client still connected at the end. The clients run in this process (asyncio + httpx), so they share the CPU with the
server, as any client on the same machine would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

KINDS = ("valid", "empty", "wrong-modality", "garbage", "oversized")


# ---------------------------------------------------------------------------------- set-up
def train_model(root: Path, epochs: int) -> Path:
    from mmfuse.classifier import MultimodalClassifier
    from mmfuse.data.synthetic import make_shapes

    make_shapes(root / "data", 8, 3, image_size=64, audio_seconds=1.0, seed=0)
    clf = MultimodalClassifier(
        epochs=epochs,
        batch_size=8,
        device="cpu",
        verbose=False,
        train_options={"tensorboard": False},
        out_dir=root / "run",
    )
    clf.fit(root / "data" / "manifest.csv")
    return clf.save(root / "model")


def make_uploads(root: Path, max_upload: int) -> dict[str, dict]:
    """httpx `files=` per request kind: one 64×64 PNG and one 1 s WAV, and the bad ones."""
    from mmfuse.data.synthetic import make_shapes

    make_shapes(root / "upload", 1, 2, image_size=64, audio_seconds=1.0, seed=1)
    png = (root / "upload" / "red-0000.png").read_bytes()
    wav = (root / "upload" / "red-0000.wav").read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes()
    return {
        "valid": {"image": ("a.png", png), "audio": ("a.wav", wav)},
        "empty": {"image": ("empty.png", b""), "audio": ("a.wav", wav)},
        "wrong-modality": {"image": ("a.wav", wav)},
        "garbage": {"image": ("noise.png", noise)},
        "oversized": {"image": ("big.png", png + bytes(max_upload))},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, max_upload: int, args, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "mmfuse",
        "serve",
        str(model),
        "--port",
        str(port),
        "--max-upload-mb",
        str(max_upload / 2**20),
        "--log-level",
        "warning",
        "--header-timeout",
        str(args.header_timeout),
        "--body-timeout",
        str(args.body_timeout),
        "--max-connections",
        str(args.clients + args.slow_clients + 16),
    ]
    if args.torch_threads:
        command += ["--torch-threads", str(args.torch_threads)]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server did not answer /health in 120 s:\n{log.read_text()}")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ---------------------------------------------------------------------------------- runs
def sequential(url: str, files: dict, n: int) -> list[float]:
    """Client-side milliseconds of `n` single predictions, one at a time (after 5 warm-ups)."""
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n + 5):
            start = time.perf_counter()
            response = client.post("/predict", files=files)
            took = (time.perf_counter() - start) * 1000
            response.raise_for_status()
            if i >= 5:
                times.append(took)
    return times


SLOW = {  # kind: (sent at once, then trickled a byte every 0.5 s)
    "idle": (b"", b""),
    "slow headers": (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: yes\r\n"),
    "slow body": (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=b0\r\n\r\n"
        b'--b0\r\nContent-Disposition: form-data; name="text"\r\n\r\n',
        b"a red square ",
    ),
}


async def slow_client(port: int, kind: str, deadline: float) -> tuple[str, float | None]:
    """One client that never finishes its request: (the server's status, or "none", and the
    seconds until the server closed the connection; None if it was still open at `deadline`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head, trickle = SLOW[kind]
    start, answer, i = time.monotonic(), b"", 0
    writer.write(head)
    try:
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except asyncio.TimeoutError:
                if trickle:
                    writer.write(trickle[i % len(trickle) : i % len(trickle) + 1])
                    i += 1
                continue
            if not chunk:
                status = answer.split(b" ", 2)[1].decode() if answer else "none"
                return status, time.monotonic() - start
            answer += chunk
        return "held open", None
    except ConnectionError:
        return "reset", time.monotonic() - start
    finally:
        writer.close()


async def load(url: str, uploads: dict, args, server_pid: int) -> dict:
    weights = [args.valid_share] + [(1 - args.valid_share) / (len(KINDS) - 1)] * (len(KINDS) - 1)
    statuses: dict[str, Counter] = defaultdict(Counter)
    latencies: list[float] = []
    rss = [rss_mib(server_pid)]  # every 0.5 s
    sent = 0
    deadline = time.monotonic() + args.seconds
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)

    async def client_loop(client: httpx.AsyncClient, rng: random.Random) -> None:
        nonlocal sent
        while time.monotonic() < deadline and sent < args.max_requests:
            sent += 1
            kind = rng.choices(KINDS, weights)[0]
            start = time.perf_counter()
            try:
                response = await client.post("/predict", files=uploads[kind])
                status = str(response.status_code)
            except httpx.TransportError as e:
                status = f"transport error ({type(e).__name__})"
            took = (time.perf_counter() - start) * 1000
            statuses[kind][status] += 1
            if kind == "valid" and status == "200":
                latencies.append(took)

    async def watch_memory() -> None:
        while time.monotonic() < deadline:
            rss.append(rss_mib(server_pid))
            await asyncio.sleep(0.5)

    port = int(url.rsplit(":", 1)[1])
    kinds = [list(SLOW)[i % len(SLOW)] for i in range(args.slow_clients)]
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        watcher = asyncio.create_task(watch_memory())
        slow = [asyncio.create_task(slow_client(port, k, deadline)) for k in kinds]
        await asyncio.gather(*(client_loop(client, random.Random(i)) for i in range(args.clients)))
        elapsed = time.perf_counter() - start
        slow_results = await asyncio.gather(*slow)
        watcher.cancel()
    return {
        "elapsed": elapsed,
        "statuses": statuses,
        "latencies": latencies,
        "rss": rss,
        "slow": list(zip(kinds, slow_results)),
    }


def report_slow(slow: list[tuple[str, tuple[str, float | None]]]) -> int:
    """Print what became of the slow clients; the number still connected at the end."""
    if not slow:
        return 0
    print("\n| slow client | count | answers | disconnected after p50 / max s | held open |")
    print("|---|---|---|---|---|")
    for kind in SLOW:
        results = [r for k, r in slow if k == kind]
        answers = Counter(status for status, _ in results)
        times = [t for _, t in results if t is not None]
        print(
            f"| {kind} | {len(results)} | {', '.join(f'{a}: {n}' for a, n in answers.items())} | "
            f"{percentile(times, 50):.1f} / {max(times, default=float('nan')):.1f} | "
            f"{len(results) - len(times)} |"
        )
    return sum(t is None for _, (_, t) in slow)


# ---------------------------------------------------------------------------------- report
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", metavar="DIR", help="model folder (default: train a small one)")
    ap.add_argument("--clients", type=int, default=50, help="concurrent clients (default: 50)")
    ap.add_argument("--seconds", type=float, default=30.0, help="load duration (default: 30)")
    ap.add_argument("--max-requests", type=int, default=100_000, help="cap on load requests")
    ap.add_argument("--valid-share", type=float, default=0.8, help="share of valid uploads")
    ap.add_argument("--sequential", type=int, default=100, help="sequential predictions timed")
    ap.add_argument(
        "--max-upload-kb", type=int, default=256, help="the server's body limit (default: 256)"
    )
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the trained model")
    ap.add_argument("--torch-threads", type=int, help="the server's --torch-threads")
    ap.add_argument(
        "--slow-clients", type=int, default=0, help="clients that never finish (default: 0)"
    )
    ap.add_argument("--header-timeout", type=float, default=10.0, help="the server's (10)")
    ap.add_argument("--body-timeout", type=float, default=60.0, help="the server's (60)")
    args = ap.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        model = Path(args.model) if args.model else train_model(root, args.epochs)
        if not args.model:
            print(f"trained {model} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        max_upload = args.max_upload_kb * 1024
        uploads = make_uploads(root, max_upload)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(model, port, max_upload, args, root / "server.log")
        try:
            rss_start = rss_mib(server.pid)
            seq = sequential(url, uploads["valid"], args.sequential)
            rss_warm = rss_mib(server.pid)
            result = asyncio.run(load(url, uploads, args, server.pid))
            rss_end = rss_mib(server.pid)
            batching = httpx.get(f"{url}/health", timeout=10).json()["batching"]
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        log = (root / "server.log").read_text()

    statuses = result["statuses"]
    total = sum(sum(c.values()) for c in statuses.values())
    lat = result["latencies"]
    by_status = Counter()
    for counts in statuses.values():
        by_status.update(counts)
    bad = {s: n for s, n in by_status.items() if not s.isdigit() or int(s) >= 500}

    threads = args.torch_threads or "default"
    print(
        f"server: {os.cpu_count()} CPU cores, one worker, torch threads {threads}, "
        f"max upload {args.max_upload_kb} KiB, load average before "
        f"{' '.join(f'{x:.1f}' for x in load_before)}"
    )
    print(f"\n## Sequential: {args.sequential} single predictions (one image + one 1 s clip)\n")
    print("| p50 ms | p95 ms | p99 ms | mean ms | target p50 < 50 ms |")
    print("|---|---|---|---|---|")
    p50 = percentile(seq, 50)
    print(
        f"| {p50:.1f} | {percentile(seq, 95):.1f} | {percentile(seq, 99):.1f} | "
        f"{statistics.fmean(seq):.1f} | {'met' if p50 < 50 else 'MISSED'} |"
    )
    print(f"\n## Load: {args.clients} clients for {result['elapsed']:.1f} s\n")
    print("| metric | value |\n|---|---|")
    print(f"| requests | {total} |")
    print(f"| requests/s | {total / result['elapsed']:.1f} |")
    print(f"| valid requests answered 200 | {len(lat)} |")
    print(
        f"| valid p50 / p95 / p99 ms | {percentile(lat, 50):.1f} / {percentile(lat, 95):.1f} / "
        f"{percentile(lat, 99):.1f} |"
    )
    print(
        f"| forward passes / mean batch / largest | {batching['forwards']} / "
        f"{batching['mean_batch']:.2f} / {batching['largest_batch']} |"
    )
    print(f"| 5xx or transport errors | {sum(bad.values())} |")
    print(
        f"| server RSS start / after warm-up / peak / end MiB | {rss_start:.0f} / "
        f"{rss_warm:.0f} / {max(result['rss']):.0f} / {rss_end:.0f} |"
    )
    quarters = [result["rss"][round(q * (len(result["rss"]) - 1))] for q in (0.25, 0.5, 0.75)]
    print(
        "| server RSS at 1/4, 1/2, 3/4 of the load MiB | "
        + " / ".join(f"{r:.0f}" for r in quarters)
        + " |"
    )
    print(
        f"| RSS growth: warm-up to end / second half of the load MiB | "
        f"{rss_end - rss_warm:+.1f} / {rss_end - quarters[1]:+.1f} |"
    )
    print("\n| request kind | answers by status |\n|---|---|")
    for kind in KINDS:
        counts = ", ".join(f"{s}: {n}" for s, n in sorted(statuses[kind].items()))
        print(f"| {kind} | {counts or '-'} |")
    held = report_slow(result["slow"])
    if bad or held:
        tail = log[-3000:]
        print(
            f"\nFAILED: {bad}, {held} slow clients held open; server log:\n{tail}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
