"""serve.py: the page and the JSON API, limits and errors, the queue, cancellation."""

from __future__ import annotations

import base64
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import make_tiny_checkpoint

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

import serve
from common.app.serving import JobCancelledError, create_app
from common.core.user_errors import UsageError
from common.inference.single_image import (
    RunOptions,
    forward_probs,
    manipulated_map,
    release_levels,
    resize_input,
)

WEB = Path(__file__).resolve().parents[1] / "web"


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _photo(h: int = 80, w: int = 100) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    img[20:50, 30:70] = 230
    return img


def _decode_map(b64: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)


def _app(path: Path, *extra: str):
    args = serve.parse_args(["--model_path", str(path), "--precision", "fp32", *extra])
    service, _ = serve.build(args)
    return service, create_app(service, args.max_upload_mb, args.max_pixels)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return {
        "binary": make_tiny_checkpoint(root / "binary.pt"),
        "three": make_tiny_checkpoint(root / "three.pt", nclass=3),
        "cls": make_tiny_checkpoint(root / "cls.pt", cls_head="max"),
    }


@pytest.fixture(scope="module")
def binary(checkpoints):
    service, app = _app(checkpoints["binary"], "--no-fast")
    with TestClient(app) as client:
        yield service, client


def test_page_and_its_assets_load_nothing_from_the_internet(binary):
    _, client = binary
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200
    for path in WEB.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path.name
    assert client.get("/docs").status_code == 404  # CDN-based docs are off
    assert client.head("/").status_code == 200  # uptime checks


def test_every_error_answers_with_the_same_body(binary):
    """Unknown paths and methods answer {"error": …} as the API's own errors do, not
    FastAPI's {"detail": …}, so a client reads one key."""
    _, client = binary
    for method, path, status in (
        ("get", "/api/nothing-here", 404),
        ("get", "/api/predict", 405),
        ("put", "/api/jobs/abc", 405),
        ("get", "/api/jobs/abc", 404),
    ):
        r = getattr(client, method)(path)
        assert r.status_code == status, (method, path, r.text)
        assert set(r.json()) == {"error"} and r.json()["error"], (method, path, r.text)
    assert "POST" in client.get("/api/predict").headers["allow"]


def test_health_and_model(binary):
    _, client = binary
    assert client.get("/api/health").json()["status"] == "ok"
    model = client.get("/api/model").json()
    assert model["kind"] == "localization" and model["backbone"] == "resnet18"
    assert model["precision"] == "fp32" and model["name"] == "binary.pt"


def test_predict_gives_the_release_map_and_score(binary):
    service, client = binary
    image = _photo()
    r = client.post(
        "/api/predict",
        files={"image": ("photo.png", _png(image), "image/png")},
        data={"resize": "512", "threshold": "0.4"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    levels = _decode_map(body["map_png"])
    assert levels.shape == (80, 100) and levels.dtype == np.uint8
    model = service.analyser.model
    probs = forward_probs(model, torch.from_numpy(resize_input(image, 512))[None], RunOptions())
    want = release_levels(manipulated_map(probs[0].numpy()), (80, 100))
    assert np.array_equal(levels, want)  # what infer_mvss_calmetrics.py would write
    assert body["score"] == pytest.approx(levels.max() / 255)
    assert body["threshold"] == 0.4 and body["image_threshold"] == 0.5
    assert body["manipulated"] == (body["score"] > 0.5)  # the image threshold decides
    assert body["width"] == 100 and body["height"] == 80 and "inference_s" in body["timings"]
    assert body["verdict"]


def test_full_resolution_tiles_and_jobs_with_progress(binary):
    _, client = binary
    image = _photo(150, 170)
    r = client.post(
        "/api/jobs",
        files={"image": ("big.png", _png(image), "image/png")},
        data={"resize": "none"},
    )
    assert r.status_code == 200
    job = r.json()["id"]
    for _ in range(200):
        body = client.get(f"/api/jobs/{job}").json()
        if body["state"] == "done":
            break
        time.sleep(0.05)
    assert body["state"] == "done" and body["progress"] == 1.0
    assert _decode_map(body["result"]["map_png"]).shape == (150, 170)
    assert client.get(f"/api/jobs/{job}").status_code == 404  # collected once
    # cancelling a job that no longer exists (or never did) cancels nothing: 404 too
    for gone in (job, "nonexistent"):
        r = client.delete(f"/api/jobs/{gone}")
        assert r.status_code == 404 and "no such job" in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("content", "status", "reason"),
    [
        (b"this is text, not an image", 422, "not a readable image"),
        (b"", 422, "empty"),
        (_png(_photo())[:-20], 422, "truncated PNG"),
        (cv2.imencode(".jpg", _photo())[1].tobytes()[:-30], 422, "truncated JPEG"),
    ],
)
def test_bad_uploads_get_a_reason(binary, content, status, reason):
    _, client = binary
    r = client.post("/api/predict", files={"image": ("x.png", content, "image/png")})
    assert r.status_code == status and reason in r.json()["error"]


def test_bad_options_are_422(binary):
    _, client = binary
    files = {"image": ("x.png", _png(_photo()), "image/png")}
    assert client.post("/api/predict", files=files, data={"threshold": "2"}).status_code == 422
    assert client.post("/api/predict", files=files, data={"resize": "300"}).status_code == 422


def test_limits_are_413(checkpoints):
    _, app = _app(checkpoints["binary"], "--no-fast", "--max-upload-mb", "0.001")
    with TestClient(app) as client:
        r = client.post("/api/predict", files={"image": ("x.png", _png(_photo()), "image/png")})
        assert r.status_code == 413 and "upload limit" in r.json()["error"]
    _, app = _app(checkpoints["binary"], "--no-fast", "--max-pixels", "5000")
    with TestClient(app) as client:
        r = client.post("/api/predict", files={"image": ("x.png", _png(_photo()), "image/png")})
        assert r.status_code == 413 and "too large" in r.json()["error"]


def test_uploads_a_browser_cannot_draw_come_back_with_a_preview(binary):
    """A TIFF (which the page accepts but browsers do not draw) gets a JPEG of what was
    decoded, by /api/predict and by /api/jobs; a PNG needs none."""
    _, client = binary
    ramp = np.linspace(0, 255, 100, dtype=np.uint8)
    photo = np.dstack(
        [np.tile(ramp, (80, 1)), np.tile(ramp[::-1], (80, 1)), np.full((80, 100), 90, np.uint8)]
    )
    ok, tiff = cv2.imencode(".tif", photo)
    assert ok
    r = client.post("/api/predict", files={"image": ("x.tif", tiff.tobytes(), "image/tiff")})
    assert r.status_code == 200, r.text
    preview = _decode_map(r.json()["preview_jpg"])
    assert preview.shape == photo.shape
    assert np.abs(preview.astype(int) - photo).mean() < 3  # the photo, JPEG-compressed
    job = client.post("/api/jobs", files={"image": ("x.tif", tiff.tobytes(), "image/tiff")})
    for _ in range(200):
        body = client.get(f"/api/jobs/{job.json()['id']}").json()
        if body["state"] == "done":
            break
        time.sleep(0.05)
    assert body["state"] == "done" and "preview_jpg" in body["result"]
    r = client.post("/api/predict", files={"image": ("x.png", _png(photo), "image/png")})
    assert "preview_jpg" not in r.json()


def test_previews_are_bounded():
    from common.app.serving import PREVIEW_MAX_SIDE, browser_draws, preview_jpg

    wide = _decode_map(preview_jpg(np.zeros((50, 3 * PREVIEW_MAX_SIDE, 3), np.uint8)))
    assert wide.shape[:2] == (17, PREVIEW_MAX_SIDE)
    assert browser_draws(b"RIFF\x00\x00\x00\x00WEBPVP8 ") and not browser_draws(b"II*\x00")


def test_a_decompression_bomb_is_refused_in_plain_words(binary):
    """A few hundred bytes whose header claims 60000×60000: the header check's own words,
    never a decoder's internal message."""
    from test_io_masks import _bomb

    _, client = binary
    for ext in (".png", ".jpg"):
        r = client.post("/api/predict", files={"image": (f"bomb{ext}", _bomb(ext), "image/png")})
        assert r.status_code == 413, r.text
        assert "image too large (60000×60000 >" in r.json()["error"]
        assert "OpenCV" not in r.json()["error"] and ".cpp" not in r.json()["error"]


def test_full_queue_is_503_with_retry_after(checkpoints):
    service, app = _app(checkpoints["binary"], "--no-fast", "--max-queue", "1")
    with TestClient(app) as client:
        service.reserve()  # someone else's image occupies the only place
        try:
            r = client.post("/api/predict", files={"image": ("x.png", _png(_photo()), "image/png")})
        finally:
            service.release()
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        ok = client.post("/api/predict", files={"image": ("x.png", _png(_photo()), "image/png")})
        assert ok.status_code == 200


def test_cancelled_work_is_dropped(binary):
    service, _ = binary
    calls = []
    real = service.analyser

    class Spy:
        info = real.info

        def __call__(self, image, resize, on_progress=None):
            calls.append(1)
            return real(image, resize, on_progress)

    service.analyser = Spy()
    try:
        queued = service.new_job()
        queued.cancel.set()
        service.reserve()
        with pytest.raises(JobCancelledError):
            service.run(queued, _photo(), 512)
        assert calls == []  # cancelled while waiting: never run
        running = service.new_job()
        service.reserve()
        timer = threading.Timer(0.0, running.cancel.set)
        timer.start()
        timer.join()
        with pytest.raises(JobCancelledError):  # stops at the first tile group
            service.run(running, _photo(300, 300), None)
        assert service.waiting == 0
    finally:
        service.analyser = real


def test_three_class_and_classifier_checkpoints(checkpoints):
    files = {"image": ("x.png", _png(_photo()), "image/png")}
    _, app = _app(checkpoints["three"])
    with TestClient(app) as client:
        body = client.post("/api/predict", files=files).json()
        classes = _decode_map(body["classes_png"])
        assert classes.shape == (80, 100) and set(np.unique(classes)) <= {0, 1, 2}
        assert client.get("/api/model").json()["kind"] == "three_class"
    _, app = _app(checkpoints["cls"])
    with TestClient(app) as client:
        body = client.post("/api/predict", files=files).json()
        assert client.get("/api/model").json()["kind"] == "classification"
        assert 0.0 <= body["score"] <= 1.0 and "map_png" in body


def test_nothing_is_written(binary, tmp_path, monkeypatch):
    _, client = binary
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    client.post("/api/predict", files={"image": ("x.png", _png(_photo()), "image/png")})
    assert set(os.listdir(tmp_path)) == before


def test_missing_checkpoint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/demo here
    with pytest.raises(UsageError, match="no checkpoint given"):
        serve.parse_args([])
    assert serve.main(["--model_path", str(tmp_path / "nope.pt")]) == 2


def test_concurrent_clients_get_answers_or_503(checkpoints):
    """Eight clients at once against a queue of two: every request is answered (200 or
    503 with Retry-After), and the queue is empty afterwards."""
    service, app = _app(checkpoints["binary"], "--no-fast", "--max-queue", "2")
    files = {"image": ("x.png", _png(_photo()), "image/png")}
    codes: list[int] = []
    with TestClient(app) as client:

        def one() -> None:
            r = client.post("/api/predict", files=files)
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                assert int(r.headers["Retry-After"]) > 0
            codes.append(r.status_code)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert len(codes) == 8 and 200 in codes
    assert service.waiting == 0


def test_a_full_queue_refuses_before_decoding(checkpoints):
    service, app = _app(checkpoints["binary"], "--no-fast", "--max-queue", "1")
    with TestClient(app) as client:
        service.reserve()
        try:  # not an image at all, but no place: 503, the upload is not decoded
            r = client.post("/api/predict", files={"image": ("x.png", b"text", "image/png")})
        finally:
            service.release()
        assert r.status_code == 503
        r = client.post("/api/predict", files={"image": ("x.png", b"text", "image/png")})
        assert r.status_code == 422 and service.waiting == 0  # the place was given back


def test_oversized_bodies_are_refused_as_they_arrive(checkpoints):
    _, app = _app(checkpoints["binary"], "--no-fast", "--max-upload-mb", "0.1")
    big = b"x" * (3 * 1024 * 1024)
    with TestClient(app) as client:
        r = client.post("/api/predict", files={"image": ("x.png", big, "image/png")})
        assert r.status_code == 413 and "upload limit" in r.json()["error"]

        def chunks():  # no Content-Length: counted as the bytes come
            yield (
                b'--zz\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
                b"Content-Type: image/png\r\n\r\n"
            )
            for _ in range(24):
                yield b"y" * (128 * 1024)

        r = client.post(
            "/api/predict",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=zz"},
        )
        assert r.status_code == 413


def test_missing_field_is_explained(binary):
    _, client = binary
    r = client.post("/api/predict", data={"threshold": "0.5"})
    assert r.status_code == 422 and "image" in r.json()["error"]


def test_classifier_score_at_full_resolution_is_the_classifiers(checkpoints):
    from common.inference.crops import DEFAULT_CROP, DEFAULT_CROP_STRIDE, score_crops

    service, app = _app(checkpoints["cls"], "--no-fast")
    image = _photo(150, 170)
    with TestClient(app) as client:
        r = client.post(
            "/api/predict",
            files={"image": ("x.png", _png(image), "image/png")},
            data={"resize": "none"},
        )
    body = r.json()
    model, opts = service.analyser.model, service.analyser.opts
    want = score_crops(model, image, opts, DEFAULT_CROP, DEFAULT_CROP_STRIDE, "negative")[0]
    assert body["score"] == pytest.approx(want, abs=1e-6)


def test_ground_truth_masks_are_read_by_the_toolkit(binary):
    _, client = binary
    colour = np.full((40, 50, 3), 255, np.uint8)
    colour[5:15, 5:25] = (0, 0, 255)  # the seed's red: tampered, on a white background
    index = np.zeros((20, 25), np.uint8)
    index[:5] = 1  # class indices 0/1, at half the size
    for mask, want in ((colour, 200), (index, 5 * 2 * 50)):
        r = client.post(
            "/api/mask",
            files={"mask": ("m.png", _png(mask), "image/png")},
            data={"width": "50", "height": "40"},
        )
        assert r.status_code == 200, r.text
        decoded = _decode_map(r.json()["mask_png"])
        assert decoded.shape == (40, 50) and int((decoded > 0).sum()) == want
    r = client.post(
        "/api/mask",
        files={"mask": ("m.png", b"nope", "image/png")},
        data={"width": "50", "height": "40"},
    )
    assert r.status_code == 422


def test_unpolled_page_jobs_are_cancelled_and_failures_end_jobs(binary, monkeypatch):
    service, client = binary
    job = service.new_job()
    job.polled = True
    job.seen = time.monotonic() - 3600  # its page went away long ago
    service.reserve()
    with pytest.raises(JobCancelledError):
        service.run(job, _photo(), 512)
    service.prune()
    assert job.id not in service.jobs and service.waiting == 0
    real = service.analyser

    class Broken:
        info = real.info

        def __call__(self, image, resize, on_progress=None):
            raise ValueError("a bug in a model")

    service.analyser = Broken()
    try:
        r = client.post("/api/jobs", files={"image": ("x.png", _png(_photo()), "image/png")})
        job_id = r.json()["id"]
        for _ in range(100):
            body = client.get(f"/api/jobs/{job_id}").json()
            if body["state"] != "queued" and body["state"] != "running":
                break
            time.sleep(0.05)
        assert body["state"] == "error" and "ValueError" in body["error"]
    finally:
        service.analyser = real
    assert service.waiting == 0


def test_nan_upload_limit_is_a_user_error():
    with pytest.raises(UsageError, match="must be a number > 0, got nan") as err:
        serve.parse_args(["--model_path", "x.pt", "--max-upload-mb", "nan"])
    assert err.value.where == "--max-upload-mb"


def test_the_server_takes_the_scripts_options(checkpoints):
    """--amp, --fast/--no-fast, --channels-last, --winograd, --tile: the scripts' names
    and meanings; the server's defaults are the fast path and --amp auto."""
    path = str(checkpoints["binary"])
    default = serve.parse_args(["--model_path", path])
    assert (default.amp, default.fast, default.channels_last) == ("auto", True, True)
    assert default.winograd == 2 and default.tile == 512 and default.tile_stride == 384
    plain = serve.parse_args(["--model_path", path, "--no-fast", "--amp", "off"])
    assert (plain.fast, plain.amp, plain.winograd) == (False, "off", None)
    tiles = serve.parse_args(["--model_path", path, "--tile", "128", "--tile-stride", "96"])
    assert (tiles.tile, tiles.tile_stride) == (128, 96)
    with pytest.raises(UsageError, match="stride 200"):
        serve.build(
            serve.parse_args([*["--model_path", path], "--tile", "128", "--tile-stride", "200"])
        )


@pytest.mark.skipif(
    not torch.backends.mkldnn.is_available() or os.uname().machine not in ("x86_64", "AMD64"),
    reason="the int8 path is for x86 CPUs",
)
def test_the_server_runs_the_int8_path(checkpoints, tmp_path):
    cache = tmp_path / "int8.pt"
    service, app = _app(
        checkpoints["binary"],
        *["--int8", "--int8-images", "2", "--int8-min-gain", "0", "--int8-cache", str(cache)],
    )
    assert service.analyser.info.precision == "bf16" and cache.is_file()
    with TestClient(app) as client:
        r = client.post(
            "/api/predict",
            files={"image": ("photo.png", _png(_photo()), "image/png")},
            data={"resize": "512"},
        )
    assert r.status_code == 200, r.text
    assert 0.0 <= r.json()["score"] <= 1.0


def test_verdicts_claim_only_what_was_measured(checkpoints, tmp_path):
    """Without a calibration the verdict says the score is not a probability (and never
    "confident"); with one, how often such images were manipulated where it was fitted."""
    from common.evaluation.calibration import Calibration
    from common.evaluation.thresholds import ChosenThresholds

    _, app = _app(checkpoints["binary"], "--no-fast")
    with TestClient(app) as client:
        plain = client.post("/api/predict", files={"image": ("a.png", _png(_photo()), "image/png")})
        model = client.get("/api/model").json()
    body = plain.json()
    assert body["calibrated"] is False and body["probability"] is None
    assert "not a probability" in body["verdict"] and "confident" not in body["verdict"]
    assert model["calibrated"] is False and model["image_threshold"] == 0.5

    state = torch.load(checkpoints["binary"], weights_only=True)
    calibration = Calibration(2.0, -1.0, "val", 60, 0.3, 0.05)
    chosen = ChosenThresholds("localization", 0.3, 0.6, "val", 60, calibration=calibration)
    state["thresholds"] = chosen.to_dict()
    calibrated = tmp_path / "calibrated.pt"
    torch.save(state, calibrated)
    _, app = _app(calibrated, "--no-fast")
    with TestClient(app) as client:
        model = client.get("/api/model").json()
        body = client.post(
            "/api/predict", files={"image": ("a.png", _png(_photo()), "image/png")}
        ).json()
    assert model["calibrated"] is True and model["pixel_threshold"] == 0.3
    assert model["calibration"]["fitted_on"] == "val"
    assert body["threshold"] == 0.3 and body["image_threshold"] == 0.6
    assert body["probability"] == pytest.approx(float(calibration(body["score"])))
    assert body["manipulated"] == (body["score"] > 0.6)
    assert f"{100 * body['probability']:.0f} % of the time" in body["verdict"]
    assert "on val (60 images)" in body["verdict"]


@pytest.mark.parametrize("policy", ["negative", "positive"])
def test_a_three_image_class_classifier_scores_as_its_training_did(tmp_path, policy):
    """The web app scores a classifier with three image classes (authentic / tampered /
    desensitised only) as its training's policy says: P(tampered) under ``negative``,
    1 − P(authentic) under ``positive``, whole image or crops."""
    from common.data.transforms import normalize_bgr_batch
    from common.inference.crops import DEFAULT_CROP, score_crops
    from common.inference.single_image import run_model
    from models import get_mvss_cls

    torch.manual_seed(3)
    net = get_mvss_cls(backbone="resnet18", head="linear", num_image_classes=3)
    config = {
        "model": {"backbone": "resnet18", "nclass": 1, "head": "linear", "num_image_classes": 3},
        "task": "classification",
        "desensitised": policy,
    }
    path = tmp_path / f"cls3_{policy}.pt"
    torch.save({"model": net.state_dict(), "config": config}, path)
    service, info = serve.build(
        serve.parse_args(["--model_path", str(path), "--no-fast", "--amp", "off"])
    )
    assert (info.kind, info.desensitised) == ("classification", policy)
    image = _photo(96, 112)
    analyser = service.analyser
    x = normalize_bgr_batch(torch.from_numpy(resize_input(image, 512))[None])
    probs = torch.softmax(run_model(analyser.model, x, analyser.opts).cls.float(), dim=1)[0]
    want = float(probs[1]) if policy == "negative" else 1 - float(probs[0])
    assert analyser(image, 512).score == pytest.approx(want, abs=1e-5)
    crops = score_crops(analyser.model, image, analyser.opts, DEFAULT_CROP, DEFAULT_CROP, policy)
    assert analyser(image, None).score == pytest.approx(crops[0], abs=1e-6)
