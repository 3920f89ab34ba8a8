"""migm-demo in a real browser: the server in a subprocess on a free loopback port, Debian's headless
Chromium driven by Selenium. Types a prompt (tiny-scenes), clicks Generate, waits for both images,
checks they are real images unlike the placeholder, reads the speedup and the agreement, tries a
prompt with a control token and sees the message, and leaves a screenshot (tmp_path, and a copy at
$MIGM_DEMO_SCREENSHOT if set). Bounded: every wait shares one deadline, and the server is killed
whatever happens."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from migm.serving.ports import free_ports

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BUDGET_S = 85  # the whole test, server start to screenshot
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1200"]


def _missing() -> str | None:
    for path in (CHROMIUM, DRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} not installed (Debian: apt-get install chromium chromium-driver)"
    for mod in ("gradio", "selenium"):
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} not installed (pip install -e '.[demo]')"
    return None


pytestmark = [pytest.mark.slow,  # starts a server and a browser
              pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def wait(self, what: str, probe, every: float = 0.25):
        """probe()'s first truthy value; fails naming `what` when the deadline passes."""
        last = None
        while self.left() > 0:
            try:
                value = probe()
                if value:
                    return value
            except Exception as e:  # the page is still rendering: try again  # noqa: BLE001
                last = e
            time.sleep(every)
        pytest.fail(f"timed out waiting for {what} ({last!r})")


def _decode(src: str) -> np.ndarray:
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        with urllib.request.urlopen(src, timeout=10) as r:
            data = r.read()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _set(driver, css: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys  # optional extra (demo)

    box = driver.find_element("css selector", css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


def _value(driver, css: str) -> str:
    return driver.find_element("css selector", css).get_attribute("value") or ""


def _src(driver, css: str) -> str:
    return driver.find_element("css selector", css).get_attribute("src") or ""


@pytest.fixture
def server(tmp_path):
    port = free_ports(1)[0]
    log = open(tmp_path / "server.log", "wb")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "-c", "from migm.cli.demo import main; main()", "--model", "tiny-scenes",
                             "--host", "127.0.0.1", "--port", str(port), "--max-queue", "4"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT)

    def kill():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    watchdog = threading.Timer(BUDGET_S + 30, kill)  # a hung test still frees the port and the CPU
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{port}/", proc, tmp_path / "server.log"
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                kill()
                proc.wait(10)
        log.close()
        assert proc.poll() is not None


def test_demo_page_in_chromium(server, tmp_path):
    from selenium import webdriver  # optional extra (demo)
    from selenium.webdriver.chrome.service import Service  # optional extra (demo)

    url, proc, log = server
    deadline = Deadline(BUDGET_S)
    t0 = time.monotonic()

    def up():
        assert proc.poll() is None, log.read_text()[-3000:]
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200

    deadline.wait("the server to answer", up, every=0.5)

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.set_page_load_timeout(max(5, deadline.left()))
        driver.get(url)
        deadline.wait("the prompt box", lambda: driver.find_element("css selector", "#cond input"))
        placeholders = [_decode(deadline.wait(f"{w}'s placeholder", lambda w=w: _src(driver, f"#{w} img")))
                        for w in ("vanilla-image", "fast-image")]
        before = [_src(driver, "#vanilla-image img"), _src(driver, "#fast-image img")]

        _set(driver, "#cond input", "a large zebra at the top")
        _set(driver, "#steps input", "4")
        _set(driver, "#budget input", "2")
        driver.find_element("css selector", "#generate").click()
        info = deadline.wait("the strategy's image and its numbers",
                             lambda: "speedup" in _value(driver, "#fast-info textarea")
                             and _src(driver, "#fast-image img") != before[1]
                             and _src(driver, "#vanilla-image img") != before[0]
                             and _value(driver, "#fast-info textarea"))
        assert _value(driver, "#status textarea") == ""
        images = [_decode(_src(driver, f"#{w} img")) for w in ("vanilla-image", "fast-image")]
        for img, ph in zip(images, placeholders):
            assert img.std() > 10, "a blank image"
            assert img.shape != ph.shape or np.abs(img - ph).mean() > 5, "still the placeholder"
        # the tiny 64x64 images are shown enlarged by nearest neighbour: blocks of equal pixels
        assert min(images[0].shape[:2]) >= 128 and (images[0][0::4] == images[0][1::4]).all()
        vanilla_info = _value(driver, "#vanilla-info textarea")
        assert re.search(r"vanilla N=4: [0-9.]+ s, 4 base calls", vanilla_info), vanilla_info
        m = re.search(r"shortcut N=4, B=2: [0-9.]+ s, 2 base calls, speedup ([0-9.]+)x", info)
        assert m and float(m.group(1)) > 0, info
        agreement = float(re.search(r"token agreement ([0-9.]+)", _value(driver, "#agreement textarea")).group(1))
        assert 0 <= agreement <= 1
        shot = tmp_path / "demo.png"
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] > 0
        if os.environ.get("MIGM_DEMO_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["MIGM_DEMO_SCREENSHOT"])

        # bad input: a message on the page, no traceback, and the server keeps serving
        _set(driver, "#cond input", "a <|mask|> cat")
        driver.find_element("css selector", "#generate").click()
        status = deadline.wait("the error message", lambda: _value(driver, "#status textarea"))
        assert "control token <|mask|>" in status and "Traceback" not in status, status
        driver.save_screenshot(str(tmp_path / "demo-error.png"))
        assert proc.poll() is None and up()
    finally:
        driver.quit()
    print(f"browser test: {time.monotonic() - t0:.1f} s, speedup {m.group(1)}x, agreement {agreement:.3f}, "
          f"screenshot {shot}")
