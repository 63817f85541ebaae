"""End-to-end rate against the model-only rate, at the same settings: folder inference
(``--via folder``) or the web app under load (``--via server``). Target: ≥ 90 %.

``--via folder``: ``--n`` synthetic JPEGs of 1024×768 are decoded, resized to 512, run
through the model, and their maps resized back and written as PNGs with a CSV, by the
same pipeline infer_mvss_calmetrics.py uses; the model-only rate runs the same model on
pre-resized inputs, ``--batch`` at a time. The target: end-to-end images/s ≥ 90 % of the
model-only rate. With ``--perturb KIND:LEVEL`` the end-to-end side is one level of
benchmark.py instead: the degradation applied in the data-loading workers, the maps
written, then scored from disk. The model is a random ResNet-50 (BatchNorm calibrated);
``--fast`` takes the fast path (``--precision`` bf16 or fp32 weights), else fp32 eager.
Writes bench/results/e2e[_<perturb>].json.

``--via server``: serve.py under load, requests/s and latency. Starts the real server
(uvicorn, on a free port of 127.0.0.1) in this process with the checkpoint given
(default: the demo's, else a random ResNet-50 model saved to a temporary file), posts
``--size``² JPEGs (synthetic forgeries) from each count of ``--clients`` concurrent
clients (separate processes, stdlib HTTP, one connection per request), and times the
same model called directly on the same decoded images, interleaved with the loads. The
fast path unless ``--no-fast``. Target: ≥ 90 % of the model-only rate at 4 clients.
Writes bench/results/serve.json.

Usage:
  python -m bench.pipeline --via folder [--n 64] [--batch 4] [--fast] [--perturb jpeg:70]
  python -m bench.pipeline --via server [--model_path CK] [--requests 16] [--clients 1 4]
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.shared import ROOT, calibrated_model, synthetic_images, write_result
from common.accel.fast_path import optimize_for_inference
from common.benchmark.degradations import parse_sweep
from common.benchmark.runner import LoadedSet, run_localization_level
from common.core.user_errors import Parser, UsageError, non_negative_int, positive_int, run_cli
from common.data.sources import scan_images
from common.evaluation.batch_run import EvalSettings
from common.evaluation.localization import run_model_evaluation
from common.inference.single_image import RunOptions, forward_probs

TARGET = 0.90  # end-to-end rate ≥ this share of the model-only rate
DEMO = ROOT / "runs" / "demo" / "checkpoints" / "best.pt"
MODEL_SIZE = 512  # the model's input side, both ways (folder --resize, the server's)


def model_only_rate(call: Callable[[int], object], calls: int, per_call: int = 1) -> float:
    """Images per second of the model alone: ``call(i)`` for ``i`` in ``range(calls)``,
    each on ``per_call`` images (warmed up beforehand)."""
    start = time.perf_counter()
    for i in range(calls):
        call(i)
    return calls * per_call / (time.perf_counter() - start)


def share_line(rate: float, unit: str, model_rate: float) -> str:
    """``rate`` as a share of the model-only rate, against the target."""
    share = rate / model_rate
    verdict = "met" if share >= TARGET else "missed"
    return (
        f"{rate:.3f} {unit} end to end, model alone {model_rate:.3f} img/s → "
        f"{100 * share:.1f} % (target ≥ {100 * TARGET:.0f} %: {verdict})"
    )


# ----------------------------------------------------------------------------- folder


def via_folder(args: argparse.Namespace) -> int:
    try:
        perturb = parse_sweep(args.perturb)[0] if args.perturb else None
    except ValueError as exc:
        raise UsageError(str(exc), "--perturb") from exc
    base = calibrated_model()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = optimize_for_inference(base, dtype, True) if args.fast else base
    opts = RunOptions(amp="off")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, img in enumerate(synthetic_images(args.n, 768, seed=5)):
            big = cv2.resize(img, (1024, 768), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(folder / f"{i:03d}.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
        records, _ = scan_images([str(folder)])
        inputs = torch.from_numpy(synthetic_images(args.batch, MODEL_SIZE, seed=6))
        for _ in range(args.warmup):
            forward_probs(model, inputs, opts)
        batches = max(1, args.n // args.batch)
        model_rate = model_only_rate(
            lambda _: forward_probs(model, inputs, opts), batches, args.batch
        )
        settings = EvalSettings(resize=MODEL_SIZE, batch_size=args.batch, workers=args.workers)
        start = time.perf_counter()
        if perturb is None:
            run_model_evaluation(model, records, [], Path(tmp) / "out", opts, settings)
        else:  # benchmark.py's level: degraded in the workers, maps written, then scored
            data = LoadedSet("bench", str(folder), records, [])
            run_localization_level(model, data, perturb, Path(tmp) / "out", opts, settings)
        e2e_rate = args.n / (time.perf_counter() - start)
    print(f"folder of {args.n} JPEGs: {share_line(e2e_rate, 'img/s', model_rate)}")
    write_result(
        f"e2e_{perturb.name}" if perturb else "e2e",
        {
            "perturb": perturb.name if perturb else None,
            "precision": args.precision,
            "model_img_s": model_rate,
            "e2e_img_s": e2e_rate,
            "ratio": e2e_rate / model_rate,
            "n": args.n,
            "batch": args.batch,
            "workers": args.workers,
            "fast": args.fast,
        },
    )
    return 0


# ----------------------------------------------------------------------------- server


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


def _post_noop(_: int) -> None:
    return None


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


def _checkpoint(path: str | None, tmp: Path) -> str:
    if path:
        return path
    if DEMO.is_file():
        return str(DEMO)
    out = tmp / "random_resnet50.pt"
    torch.save(calibrated_model().state_dict(), out)
    return str(out)


def via_server(args: argparse.Namespace) -> int:
    import uvicorn

    import serve
    from common.app.serving import create_app

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _checkpoint(args.model_path, Path(tmp))
        serve_args = ["--model_path", checkpoint] + ([] if args.fast else ["--no-fast"])
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

        def analyse(i: int) -> object:  # the model alone, same images, same path
            return service.analyser(decoded[i % len(decoded)], MODEL_SIZE)

        for i in range(args.warmup):
            _post(url, jpegs[i % len(jpegs)])
            analyse(i)
        rows = []
        for clients in args.clients:
            n = args.requests * clients
            model_rate = model_only_rate(analyse, n)
            row = _load(url, jpegs, clients, n)
            row["model_only_per_s"] = model_rate
            row["share_of_model_rate"] = row["requests_per_s"] / model_rate
            rows.append(row)
            print(
                f"{clients} client(s): {share_line(row['requests_per_s'], 'req/s', model_rate)}; "
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


# ----------------------------------------------------------------------------- command line

# Options of one side only: option → (side, default).
ONLY = {
    "n": ("folder", 64),
    "batch": ("folder", 4),
    "workers": ("folder", 2),
    "precision": ("folder", "bf16"),
    "perturb": ("folder", None),
    "model_path": ("server", None),
    "requests": ("server", 16),
    "clients": ("server", [1, 4]),
    "size": ("server", 512),
}


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1])
    p.add_argument("--via", choices=("folder", "server"), required=True)
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        help="the fast path (default: on for the server, off for the folder: fp32 eager)",
    )
    p.add_argument(
        "--warmup", type=non_negative_int, help="calls before timing (folder 1, server 2)"
    )
    folder = p.add_argument_group("--via folder")
    folder.add_argument("--n", type=positive_int, help="images (64)")
    folder.add_argument("--batch", type=positive_int, help="images per forward (4)")
    folder.add_argument("--workers", type=non_negative_int, help="data-loading workers (2)")
    folder.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        help="fast path weights (bf16, which needs AVX-512 BF16/AMX to be fast)",
    )
    folder.add_argument("--perturb", help="time benchmark.py's path with this degradation")
    server = p.add_argument_group("--via server")
    server.add_argument("--model_path", help="checkpoint (default: the demo's, else random)")
    server.add_argument("--requests", type=positive_int, help="per client count (16)")
    server.add_argument("--clients", type=positive_int, nargs="+", help="client counts (1 4)")
    server.add_argument("--size", type=positive_int, help="side of the posted JPEGs (512)")
    args = p.parse_args(argv)
    for name, (side, default) in ONLY.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
        elif side != args.via:
            raise UsageError(f"only with --via {side}", f"--{name}")
    if args.fast is None:
        args.fast = args.via == "server"
    if args.warmup is None:
        args.warmup = 1 if args.via == "folder" else 2
    return via_folder(args) if args.via == "folder" else via_server(args)


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
