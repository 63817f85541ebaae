"""serve.py under load: requests/s and latency against the model-only rate.

Starts the real server (uvicorn, on a free port of 127.0.0.1) in this process with the
checkpoint given (default: the demo's, else a random ResNet-50 model saved to a temporary
file), posts 512×512 JPEGs (synthetic forgeries) from 1 and from 4 concurrent clients
(separate processes, stdlib HTTP, one connection per request), and times the same model
called directly on the same decoded images, interleaved with the loads.
Target: ≥ 90 % of the model-only rate at 4 clients.

Usage: python -m bench.bench_serve [--model_path CK] [--requests 16] [--clients 1 4]
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.common_bench import ROOT, synthetic_images, write_result
from common.usage import Parser, non_negative_int, positive_int, run_cli

DEMO = ROOT / "runs" / "demo" / "checkpoints" / "best.pt"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _multipart(jpeg: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + jpeg + f"\r\n--{boundary}--\r\n".encode(), boundary


def _post(url: str, jpeg: bytes) -> float:
    body, boundary = _multipart(jpeg)
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        payload = json.loads(r.read())
    assert "score" in payload, payload
    return time.perf_counter() - start


def _client(job: tuple[str, list[bytes], int, float]) -> list[float]:
    """One client process: ``count`` posts, one after the other, from ``start_at``."""
    url, jpegs, count, start_at = job
    while time.time() < start_at:
        time.sleep(0.001)
    return [_post(url, jpegs[i % len(jpegs)]) for i in range(count)]


def _load(url: str, jpegs: list[bytes], clients: int, requests: int) -> dict:
    """``requests`` posts from ``clients`` client processes (separate from the server's,
    as real clients are: in-process threads would share its interpreter lock); rate and
    latency percentiles."""
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(clients) as pool:
        pool.map(_post_noop, range(clients))  # processes started before the clock
        start_at = time.time() + 0.5
        parts = pool.map_async(_client, [(url, jpegs, n, start_at) for n in per_client])
        latencies = [t for part in parts.get() for t in part]
        wall = time.time() - start_at
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": requests,
        "requests_per_s": requests / wall,
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[max(0, round(0.95 * len(ordered)) - 1)],
    }


def _post_noop(_: int) -> None:
    return None


def _checkpoint(path: str | None, tmp: Path) -> str:
    if path:
        return path
    if DEMO.is_file():
        return str(DEMO)
    from bench.common_bench import calibrated_model

    net = calibrated_model()
    out = tmp / "random_resnet50.pt"
    torch.save(net.state_dict(), out)
    return str(out)


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--model_path", help="checkpoint (default: the demo's, else random)")
    p.add_argument("--requests", type=positive_int, default=16, help="per client count (16)")
    p.add_argument("--clients", type=positive_int, nargs="+", default=[1, 4])
    p.add_argument("--warmup", type=non_negative_int, default=2)
    p.add_argument("--size", type=positive_int, default=512)
    p.add_argument("--no-fast", action="store_true", help="the plain model (default: fast)")
    args = p.parse_args(argv)
    import uvicorn

    import serve
    from common.serving import create_app

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _checkpoint(args.model_path, Path(tmp))
        serve_args = ["--model_path", checkpoint] + (["--no-fast"] if args.no_fast else [])
        service, info = serve.build(serve.parse_args(serve_args))
        app = create_app(service, 50.0, 100_000_000)
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/api/predict"
        images = synthetic_images(8, args.size, seed=3)
        jpegs = [
            cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for im in images
        ]
        decoded = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
        for i in range(args.warmup):
            _post(url, jpegs[i % len(jpegs)])
            service.analyser(decoded[i % len(decoded)], 512)
        rows = []
        model_rates = []
        for clients in args.clients:
            n = args.requests * clients
            start = time.perf_counter()  # the model alone, same images, same path
            for i in range(n):
                service.analyser(decoded[i % len(decoded)], 512)
            model_rate = n / (time.perf_counter() - start)
            model_rates.append(model_rate)
            row = _load(url, jpegs, clients, n)
            row["model_only_per_s"] = model_rate
            row["share_of_model_rate"] = row["requests_per_s"] / model_rate
            rows.append(row)
            print(
                f"{clients} client(s): {row['requests_per_s']:.3f} req/s "
                f"(model alone {model_rate:.3f}/s, {100 * row['share_of_model_rate']:.1f} %), "
                f"p50 {row['p50_s']:.3f} s, p95 {row['p95_s']:.3f} s",
                flush=True,
            )
        server.should_exit = True
        thread.join(timeout=30)
    write_result(
        "serve",
        {
            "checkpoint": checkpoint if args.model_path or DEMO.is_file() else "random ResNet-50",
            "precision": info.precision,
            "fast": info.fast,
            "size": args.size,
            "rows": rows,
            "torch_threads": torch.get_num_threads(),
        },
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
