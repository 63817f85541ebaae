"""The local web app and HTTP API that serve.py starts (FastAPI + uvicorn).

One model, loaded once, runs in one worker thread off the event loop; requests wait in a
bounded queue (``max_queue``): when it is full the answer is 503 with ``Retry-After``, so
the server stays responsive under many clients; a place in it is taken before an upload
is decoded, so decoding is bounded too. A request whose client goes away is dropped
before it runs, a full-resolution image stops between tile groups, and a page job that is
no longer polled is cancelled. Limits: ``max_upload_mb`` (413, from ``Content-Length``
before the body is read, or as the bytes arrive), the decoder's pixel limit read from the
header (413), unreadable or truncated files (422 with the reason). Uploads are decoded
in memory; Starlette spools a multipart file over 1 MB to a temporary file of the
system's temporary folder, deleted when the request ends; nothing else is written.

Endpoints: ``GET /`` the page (plain HTML/CSS/JS from ``web/``, nothing from the internet;
FastAPI's interactive docs, which load assets from a CDN, are off), ``POST /api/predict``,
``POST /api/jobs`` + ``GET /api/jobs/{id}`` (the same with progress, for the page;
``DELETE`` cancels), ``POST /api/mask`` (a ground-truth mask decoded by the toolkit's
rules, for the page's F1/IoU), ``GET /api/health``, ``GET /api/model``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from common.core.release import RELEASE_SIZE
from common.core.scores import probabilities
from common.data.decode import BadInputError, TooLargeError, decode_image, decode_mask_bytes
from common.data.masks import CLASSIFIER_DESENSITISED, binary_from_classes, decode_classes
from common.data.transforms import normalize_bgr_batch
from common.evaluation.calibration import Calibration
from common.evaluation.thresholds import DEFAULT_THRESHOLD, Thresholds
from common.inference.crops import DEFAULT_CROP, manipulated_score, score_crops
from common.inference.single_image import (
    RunOptions,
    manipulated_map,
    predict_tiled,
    release_levels,
    resize_input,
    resize_map,
    run_model,
    scored_map,
    to_png_levels,
)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
RESIZE_CHOICES = (str(RELEASE_SIZE), "none")
JOB_TTL_S = 600  # a finished job's result waits this long for its poll
# a page job not polled for this long is cancelled (browsers throttle the timers of
# background tabs to about one a minute, so well above that)
JOB_ABANDON_S = 180
MULTIPART_SLACK = 1024 * 1024  # form fields and boundaries beside the file


class Cuts(NamedTuple):
    """The thresholds of one request: pixels (the maps) and the image score."""

    pixel: float
    image: float


class JobCancelledError(Exception):
    """The client went away: the image is abandoned."""


@dataclass
class ModelInfo:
    """What ``GET /api/model`` says."""

    checkpoint: str
    backbone: str
    nclass: int
    kind: str  # localization | three_class | classification
    precision: str
    device: str
    fast: bool
    thresholds: Thresholds = field(default_factory=Thresholds)
    # a classifier's: what its score counts a desensitised-only image as (its training's)
    desensitised: str = CLASSIFIER_DESENSITISED
    # a classifier's crops (side by side) at full resolution: the size it trained on
    crop: int = DEFAULT_CROP
    # a classifier trained on whole images resized to this side (crop: false): its score
    # at full resolution comes from the whole image at that size, as its validation's did
    resized: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k != "thresholds"}
        c = self.thresholds.calibration
        out["pixel_threshold"] = self.thresholds.pixel
        out["image_threshold"] = self.thresholds.image
        out["thresholds_source"] = self.thresholds.source
        out["calibrated"] = c is not None
        out["calibration"] = (
            None
            if c is None
            else {
                "method": c.method,
                "fitted_on": c.fitted_on,
                "images": c.images,
                "ece_before": c.ece_before,
                "ece_after": c.ece_after,
            }
        )
        return out


@dataclass
class Analysis:
    """One image's result, ready for JSON."""

    width: int
    height: int
    score: float
    levels: np.ndarray  # uint8 H×W: P(manipulated) as the release writes it
    classes: np.ndarray | None  # uint8 H×W 0/1/2 for three-class models
    seconds: float
    resize: str

    def as_json(
        self,
        model_name: str,
        threshold: float,
        timings: dict[str, float],
        preview: str | None = None,
        image_threshold: float = DEFAULT_THRESHOLD,
        calibration: Calibration | None = None,
    ) -> dict:
        """``preview``: a JPEG (base64) of what was decoded, for uploads a browser cannot
        draw (TIFF, say), so the page shows the photo under the map. ``probability`` is
        the calibrated P(manipulated) where the checkpoint's thresholds carry a
        calibration, else None (the score is not a probability)."""
        probability = None if calibration is None else float(calibration(self.score))
        out: dict[str, Any] = {
            "model": model_name,
            "width": self.width,
            "height": self.height,
            "score": self.score,
            "probability": probability,
            "calibrated": calibration is not None,
            "threshold": threshold,
            "image_threshold": image_threshold,
            "manipulated": self.score > image_threshold,
            "verdict": verdict(self.score, image_threshold, calibration),
            "resize": self.resize,
            "map_png": _png_b64(self.levels),
            "timings": {**timings, "inference_s": round(self.seconds, 4)},
        }
        if preview is not None:
            out["preview_jpg"] = preview
        if self.classes is not None:
            out["classes_png"] = _png_b64(self.classes)
            out["class_names"] = ["pristine", "tampered", "desensitised"]
        return out


# File signatures of the formats every current browser draws in an <img>.
_BROWSER_DRAWABLE = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
PREVIEW_MAX_SIDE = 2048  # the page scales the preview to the map's size


def browser_draws(data: bytes) -> bool:
    """Whether a browser can show the uploaded bytes as they are (JPEG, PNG, GIF, BMP,
    WebP); TIFF and the rest need a preview from the server."""
    return data.startswith(_BROWSER_DRAWABLE) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def preview_jpg(image: np.ndarray) -> str:
    """The decoded image as a base64 JPEG, at most ``PREVIEW_MAX_SIDE`` px on its long side."""
    h, w = image.shape[:2]
    scale = PREVIEW_MAX_SIDE / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def _png_b64(array: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def _mask_png(data: bytes, name: str, width: int, height: int, max_pixels: int) -> np.ndarray:
    """A ground-truth mask read by the toolkit's rules, as 0/255 at (height, width)."""
    classes = decode_classes(decode_mask_bytes(data, name, max_pixels), where=name)
    if classes.shape != (height, width):
        classes = cv2.resize(classes, (width, height), interpolation=cv2.INTER_NEAREST)
    return binary_from_classes(classes).astype(np.uint8) * 255


def verdict(score: float, image_threshold: float, calibration: Calibration | None) -> str:
    """Plain words for the image-level score that claim only what was measured: with a
    calibration, how often images scoring like this were manipulated on the set it was
    fitted on; without one, only which side of the threshold the score is on."""
    side = "above" if score > image_threshold else "at or below"
    decision = "flagged as manipulated" if score > image_threshold else "not flagged"
    if calibration is None:
        return (
            f"{decision}: the score {score:.3f} is {side} the image threshold "
            f"{image_threshold:.3g}; this checkpoint has no calibration, so the score is "
            "not a probability"
        )
    p = float(calibration(score))
    return (
        f"{decision} (score {score:.3f}, image threshold {image_threshold:.3g}): on "
        f"{calibration.fitted_on} ({calibration.images} images), images scoring like this "
        f"were manipulated about {100 * p:.0f} % of the time"
    )


class Analyser:
    """Runs the shared model on one decoded image (in the worker thread)."""

    def __init__(self, model: nn.Module, info: ModelInfo, opts: RunOptions) -> None:
        self.model = model.eval()
        self.info = info
        self.opts = opts

    @torch.inference_mode()
    def __call__(
        self,
        image: np.ndarray,
        resize: int | None,
        on_progress: Any = None,
    ) -> Analysis:
        start = time.perf_counter()
        h, w = image.shape[:2]
        score: float | None = None
        trained_side = self.info.resized if self.info.kind == "classification" else None
        if resize is not None:
            out = self._whole_image(image, resize)
            net = probabilities(out.seg).cpu().numpy()[0]
            levels = release_levels(manipulated_map(net), (h, w))
            probs = resize_map(net, (h, w)) if net.shape[0] > 1 else None
            if getattr(out, "cls", None) is not None and trained_side in (None, resize):
                score = self._score(out.cls)
        else:
            full = predict_tiled(self.model, image, self.opts, on_progress)
            levels = to_png_levels(manipulated_map(full))
            probs = full if full.shape[0] > 1 else None
            if self.info.kind == "classification" and not trained_side:
                score = score_crops(  # its own score, over crops (the seed's)
                    self.model,
                    image,
                    self.opts,
                    self.info.crop,
                    self.info.crop,
                    self.info.desensitised,
                )[0]
        if score is None and trained_side:  # scored as validated: whole, at its side
            score = self._score(self._whole_image(image, trained_side).cls)
        if resize is not None and on_progress is not None:  # one step, now done
            on_progress(1, 1)
        classes = probs.argmax(0).astype(np.uint8) if probs is not None else None
        if score is None:
            score = float(scored_map(levels).max())  # the release's image score: the map's max
        return Analysis(
            w, h, score, levels, classes, time.perf_counter() - start, str(resize or "none")
        )

    def _whole_image(self, image: np.ndarray, side: int) -> Any:
        """The model's outputs for the whole image resized to ``side``."""
        x = normalize_bgr_batch(torch.from_numpy(resize_input(image, side))[None])
        return run_model(self.model, x, self.opts)

    def _score(self, cls: torch.Tensor) -> float:
        return float(manipulated_score(cls, self.info.desensitised)[0])


@dataclass
class Job:
    id: str
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)  # last poll (page jobs)
    polled: bool = False  # a page job: abandoned when no longer polled
    done: int = 0
    total: int = 1
    state: str = "queued"  # queued | running | done | error | cancelled
    result: dict | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


class QueueFullError(Exception):
    pass


class Service:
    """The model, its worker thread and the bounded queue."""

    def __init__(self, analyser: Analyser, max_queue: int = 4, retry_after_s: int = 5):
        self.analyser = analyser
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mvss-model")
        self.lock = threading.Lock()
        self.waiting = 0  # queued or running
        self.jobs: dict[str, Job] = {}

    def reserve(self) -> None:
        with self.lock:
            if self.waiting >= self.max_queue:
                raise QueueFullError
            self.waiting += 1

    def release(self) -> None:
        with self.lock:
            self.waiting -= 1

    def run(self, job: Job, image: np.ndarray, resize: int | None) -> Analysis:
        """In the worker thread: skip a job cancelled while queued (or a page job no
        longer polled); report progress."""
        try:
            if job.cancel.is_set() or self.abandoned(job):
                job.state = "cancelled"
                raise JobCancelledError
            job.state = "running"

            def progress(done: int, total: int) -> None:
                job.done, job.total = done, total
                if job.cancel.is_set() or self.abandoned(job):
                    raise JobCancelledError

            return self.analyser(image, resize, progress)
        finally:
            self.release()

    @staticmethod
    def abandoned(job: Job) -> bool:
        return job.polled and time.monotonic() - job.seen > JOB_ABANDON_S

    def prune(self) -> None:
        """Forget finished jobs whose result was not fetched in time; cancel page jobs
        nobody polls any more (running ones stop at their next group of tiles)."""
        now = time.monotonic()
        for key, job in list(self.jobs.items()):
            if self.abandoned(job):
                job.cancel.set()
            finished = job.state in ("done", "error", "cancelled")
            if (finished and now - job.seen > JOB_TTL_S) or (job.cancel.is_set() and finished):
                self.jobs.pop(key, None)

    def new_job(self) -> Job:
        self.prune()
        job = Job(uuid.uuid4().hex)
        self.jobs[job.id] = job
        return job

    def shutdown(self) -> None:
        for job in self.jobs.values():
            job.cancel.set()
        self.executor.shutdown(wait=False, cancel_futures=True)


def parse_resize_option(text: str | None) -> int | None:
    """``512`` (the release's) or ``none`` (full resolution in tiles)."""
    value = (text or str(RELEASE_SIZE)).strip().lower()
    if value not in RESIZE_CHOICES:
        raise ValueError(f"resize must be {RELEASE_SIZE} or none, got {text!r}")
    return None if value == "none" else RELEASE_SIZE


def parse_threshold(text: str | None, default: float = DEFAULT_THRESHOLD) -> float:
    try:
        value = float(text) if text not in (None, "") else default
    except ValueError as exc:
        raise ValueError(f"threshold must be a number in (0, 1), got {text!r}") from exc
    if not 0 < value < 1:
        raise ValueError(f"threshold must be in (0, 1), got {text}")
    return value


class UploadLimit:
    """ASGI middleware: a POST body over ``limit`` bytes gets 413 before it is read (from
    ``Content-Length``) or as soon as the bytes arriving pass it (chunked uploads), so a
    huge upload is never received whole, nor spooled to disk."""

    def __init__(self, app: Any, limit: int, message: str) -> None:
        self.app, self.limit, self.message = app, limit, message

    async def _reject(self, send: Any) -> None:
        body = json.dumps({"error": self.message}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._reject(send)
            return
        received = 0
        exceeded = False

        async def counted() -> dict:
            nonlocal received, exceeded
            if exceeded:  # stop feeding the app: it sees the client gone
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        replaced = False

        async def answer(message: dict) -> None:
            # whatever the app makes of the cut body (FastAPI: 400), the client hears 413
            nonlocal replaced
            if not exceeded:
                await send(message)
            elif not replaced:
                replaced = True
                await self._reject(send)

        try:
            await self.app(scope, counted, answer)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not replaced:
            await self._reject(send)


def create_app(service: Service, max_upload_mb: float, max_pixels: int) -> FastAPI:
    """The FastAPI application around a :class:`Service`."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        service.shutdown()  # queued work is dropped, running tiles stop

    app = FastAPI(
        title="MVSS-Net",
        docs_url=None,  # the interactive docs load their assets from a CDN
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    limit_bytes = int(max_upload_mb * 1024 * 1024)
    too_large = f"file larger than the {max_upload_mb:g} MB upload limit"
    app.add_middleware(UploadLimit, limit=limit_bytes + MULTIPART_SLACK, message=too_large)
    info = service.analyser.info
    model_name = Path(info.checkpoint).name

    def answer(
        analysis: Analysis, th: Cuts, timings: dict[str, float], preview: str | None
    ) -> dict:
        """One image's JSON, the same for /api/predict and a finished job."""
        calibration = info.thresholds.calibration
        return analysis.as_json(model_name, th.pixel, timings, preview, th.image, calibration)

    def error(status: int, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # an unknown path or method: the same {"error": …} body as every other answer
        return error(exc.status_code, str(exc.detail), **(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts, fields = [], set()
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ())[1:]]
            fields.update(loc)
            parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg', 'invalid')}")
        hint = " (send the picture as the multipart field 'image')"
        return error(422, "; ".join(parts) + (hint if "image" in fields else ""))

    async def read_upload(upload: UploadFile) -> bytes | JSONResponse:
        data = await upload.read(limit_bytes + 1)
        if len(data) > limit_bytes:
            return error(413, too_large)
        return data

    def decode(data: bytes, name: str) -> tuple[np.ndarray, str | None] | JSONResponse:
        """The decoded image, and a preview where the browser cannot draw the upload."""
        try:
            image = decode_image(data, name or "upload", max_pixels)
        except BadInputError as exc:
            status = 413 if isinstance(exc, TooLargeError) else 422
            return error(status, f"{exc.path}: {exc.reason}")
        return image, None if browser_draws(data) else preview_jpg(image)

    def busy() -> JSONResponse:
        return error(
            503,
            "the server is busy with other images; try again shortly",
            **{"Retry-After": str(service.retry_after_s)},
        )

    @app.get("/api/health")
    async def health() -> dict:
        return {"status": "ok", "queued": service.waiting, "max_queue": service.max_queue}

    @app.get("/api/model")
    async def model() -> dict:
        return {**info.as_json(), "name": model_name}

    async def admit(
        upload: UploadFile, resize: str | None, threshold: str | None, image_th: str | None
    ) -> tuple[Job, np.ndarray, int | None, Cuts, dict[str, float], str | None] | JSONResponse:
        """Options checked, a place in the queue taken (so decoding is bounded too), the
        upload read and decoded; the place is given back when any of that fails."""
        start = time.perf_counter()
        try:
            size = parse_resize_option(resize)
            th = Cuts(
                parse_threshold(threshold, info.thresholds.pixel),
                parse_threshold(image_th, info.thresholds.image),
            )
        except ValueError as exc:
            return error(422, str(exc))
        try:
            service.reserve()
        except QueueFullError:
            return busy()
        admitted = False
        try:
            data = await read_upload(upload)
            if isinstance(data, JSONResponse):
                return data
            decoded = await asyncio.to_thread(decode, data, upload.filename or "upload")
            if isinstance(decoded, JSONResponse):
                return decoded
            image, preview = decoded
            admitted = True
        finally:
            if not admitted:  # the job will not run: its place goes back
                service.release()
        timings = {"decode_s": round(time.perf_counter() - start, 4)}
        return service.new_job(), image, size, th, timings, preview

    @app.post("/api/predict")
    async def predict(
        request: Request,
        image: UploadFile = File(...),  # noqa: B008
        resize: str | None = Form(None),
        threshold: str | None = Form(None),
        image_threshold: str | None = Form(None),
    ) -> Any:
        admitted = await admit(image, resize, threshold, image_threshold)
        if isinstance(admitted, JSONResponse):
            return admitted
        job, decoded, size, th, timings, preview = admitted
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(service.executor, service.run, job, decoded, size)
        while not future.done():
            if await request.is_disconnected():
                job.cancel.set()
                break
            await asyncio.wait([future], timeout=0.25)
        service.jobs.pop(job.id, None)
        try:
            analysis = await future
        except JobCancelledError:
            return error(499, "request cancelled")
        except Exception as exc:  # the server stays up; the client learns why
            return error(500, f"inference failed: {type(exc).__name__}: {exc}")
        return answer(analysis, th, timings, preview)

    @app.post("/api/jobs")
    async def submit(
        image: UploadFile = File(...),  # noqa: B008
        resize: str | None = Form(None),
        threshold: str | None = Form(None),
        image_threshold: str | None = Form(None),
    ) -> Any:
        admitted = await admit(image, resize, threshold, image_threshold)
        if isinstance(admitted, JSONResponse):
            return admitted
        job, decoded, size, th, timings, preview = admitted
        job.polled = True

        def work() -> None:
            try:
                analysis = service.run(job, decoded, size)
                job.result = answer(analysis, th, timings, preview)
            except JobCancelledError:
                job.state = "cancelled"
                return
            except Exception as exc:  # any failure ends the job, never leaves it running
                job.state, job.error = "error", f"inference failed: {type(exc).__name__}: {exc}"
                return
            finally:
                job.seen = time.monotonic()
            job.state = "done"

        asyncio.get_running_loop().run_in_executor(service.executor, work)
        return {"id": job.id, "state": job.state}

    @app.get("/api/jobs/{job_id}")
    async def poll(job_id: str) -> Any:
        job = service.jobs.get(job_id)
        if job is None:
            return error(404, "no such job (finished long ago, or never started)")
        job.seen = time.monotonic()
        body: dict[str, Any] = {"id": job.id, "state": job.state}
        body["progress"] = round(job.done / max(job.total, 1), 3)
        if job.state == "done":
            body["result"] = job.result
            service.jobs.pop(job_id, None)
        elif job.state in ("error", "cancelled"):
            body["error"] = job.error or "the analysis was cancelled"
            service.jobs.pop(job_id, None)
        return body

    @app.delete("/api/jobs/{job_id}")
    async def cancel(job_id: str) -> Any:
        job = service.jobs.pop(job_id, None)
        if job is None:  # nothing was cancelled: say so, as polling it does
            return error(404, "no such job (finished long ago, or never started)")
        job.cancel.set()
        return {"id": job_id, "state": "cancelled"}

    @app.post("/api/mask")
    async def mask(
        mask: UploadFile = File(...),  # noqa: B008
        width: int = Form(...),
        height: int = Form(...),
    ) -> Any:
        """A ground-truth mask read by the toolkit's rules (any encoding: grey, index,
        the seed's colours), as a 0/255 PNG at the image's size (nearest)."""
        if not (width > 0 and height > 0 and width * height <= max_pixels):
            return error(422, f"width × height must be an image size of at most {max_pixels} px")
        try:  # decoding is bounded like an image's: a place in the queue, off the loop
            service.reserve()
        except QueueFullError:
            return busy()
        try:
            data = await read_upload(mask)
            if isinstance(data, JSONResponse):
                return data
            name = mask.filename or "mask"
            binary = await asyncio.to_thread(_mask_png, data, name, width, height, max_pixels)
        except BadInputError as exc:
            return error(422, f"{exc.path}: {exc.reason}")
        finally:
            service.release()
        return {"mask_png": _png_b64(binary), "manipulated_pixels": int((binary > 0).sum())}

    @app.api_route("/", methods=["GET", "HEAD"])  # HEAD: what uptime checks send
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app
