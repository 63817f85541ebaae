"""The web page in a real browser: headless Debian Chromium driven by Selenium.

Starts serve's app with uvicorn on a free local port, uploads a picture through the page,
waits for the result, checks the score text and that the overlay is drawn, and saves a
screenshot. Skips, saying why, where Chromium, its driver or Selenium is missing
(``.ci/run`` installs Chromium first, so CI runs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import make_tiny_checkpoint

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT = os.environ.get("MVSS_SCREENSHOT")  # where to keep the screenshot (optional)

if not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()):
    pytest.skip(
        "no Chromium here: apt-get install chromium chromium-driver (CI does)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import serve  # noqa: E402
from common.app.serving import create_app  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    root = tmp_path_factory.mktemp("browser")
    checkpoint = make_tiny_checkpoint(root / "binary.pt")
    args = serve.parse_args(["--model_path", str(checkpoint), "--precision", "fp32"])
    service, _ = serve.build(args)
    app = create_app(service, args.max_upload_mb, args.max_pixels)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", root
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    except Exception as exc:  # a broken local install: say so rather than fail obscurely
        pytest.skip(f"Chromium did not start: {type(exc).__name__}: {str(exc)[:200]}")
    yield driver
    driver.quit()


def _photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 120, (120, 160, 3), dtype=np.uint8)
    img[30:80, 40:110] = 230
    cv2.imwrite(str(path), img)
    return path


def test_upload_through_the_page_shows_score_and_overlay(server, browser, tmp_path):
    url, _ = server
    browser.get(url)
    wait = WebDriverWait(browser, 120)
    wait.until(lambda d: "binary.pt" in d.find_element(By.ID, "model-info").text)
    browser.find_element(By.ID, "files").send_keys(str(_photo(tmp_path / "photo.png")))
    verdict = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".card .verdict")))
    details = browser.find_element(By.CSS_SELECTOR, ".card .details").text
    assert verdict.text and "image-level score" in details and "160×120 px" in details
    score = float(details.split("image-level score ")[1].split()[0])
    assert 0.0 <= score <= 1.0
    # the overlay canvas holds the photo with the map over it: its size, and pixels that
    # are neither blank nor all one colour
    drawn = browser.execute_script(
        """
        const c = document.querySelector('.card canvas.overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
        return [c.width, c.height, seen.size, d[3]];
        """
    )
    assert drawn[:2] == [160, 120] and drawn[2] > 10 and drawn[3] == 255
    # the threshold slider redraws in the browser: the binary view follows it
    ones = browser.execute_script(
        """
        const s = document.getElementById('threshold');
        const count = () => { const c = document.querySelector('.card canvas.binary');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 0; return n; };
        s.value = 0.01; s.dispatchEvent(new Event('input'));
        const low = count();
        s.value = 0.99; s.dispatchEvent(new Event('input'));
        const high = count();
        s.value = 0.5; s.dispatchEvent(new Event('input'));
        return [low, high];
        """
    )
    assert ones[0] >= ones[1]
    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[0] > 200 and image.std() > 5


def test_a_file_that_is_not_an_image_is_explained_in_the_page(server, browser, tmp_path):
    url, _ = server
    browser.get(url)
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    browser.find_element(By.ID, "files").send_keys(str(bad))
    error = WebDriverWait(browser, 60).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, ".card .error"))
    )
    assert "not a readable image" in error.text


def test_a_tiff_shows_its_photo_under_the_map(server, browser, tmp_path):
    """Browsers do not draw TIFF: the page draws the server's preview of it instead of a
    grey field (the bright block of the photo shows through the overlay)."""
    url, _ = server
    browser.get(url)
    img = cv2.imread(str(_photo(tmp_path / "photo.png")))
    tiff = tmp_path / "photo.tif"
    assert cv2.imwrite(str(tiff), img)
    browser.find_element(By.ID, "files").send_keys(str(tiff))
    WebDriverWait(browser, 120).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, ".card .verdict"))
    )
    inside, outside = browser.execute_script(
        """
        const c = document.querySelector('.card canvas.overlay');
        const g = c.getContext('2d');
        const mean = (x, y, w, h) => { const d = g.getImageData(x, y, w, h).data;
          let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2];
          return s / (d.length / 4) / 3; };
        return [mean(50, 40, 50, 30), mean(0, 90, 160, 30)];
        """
    )
    assert inside - outside > 60, (inside, outside)
    if SCREENSHOT:
        browser.save_screenshot(str(Path(SCREENSHOT).with_name("page_tiff.png")))
