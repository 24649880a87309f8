"""``cddfuse serve`` end to end: the real command in a subprocess, driven by Debian's headless Chromium
(Selenium with /usr/bin/chromedriver) through the page: upload, fuse, slider, download, an error.

Skipped when /usr/bin/chromium (or chromedriver, or Selenium) is absent -- except under CI (environment
variable ``CI`` set), where that is a failure: install them with ``apt-get install -y chromium
chromium-driver``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cddfuse.cli.main import main
from cddfuse.io.image import read_image, write_image

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")
ROOT = Path(__file__).resolve().parents[1]


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(weights: Path | None, *extra: str, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """``cddfuse serve`` on a free loopback port; returns the process and its base URL once it answers."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "cddfuse.cli.main", "serve", "--port", str(port), "--device", "cpu", *extra]
    if weights is not None:
        cmd += ["--weights", str(weights)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"cddfuse serve exited with {proc.returncode}: {output}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("cddfuse serve did not answer /api/health in time")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_driver(download_dir: Path, width: int = 1280, height: int = 900):
    """Debian's headless Chromium through Selenium and /usr/bin/chromedriver (no browser download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


@pytest.fixture(scope="module")
def browser_tools() -> None:
    _need(CHROMIUM.exists(), f"{CHROMIUM} not found (apt-get install -y chromium chromium-driver)")
    _need(CHROMEDRIVER.exists(), f"{CHROMEDRIVER} not found (apt-get install -y chromium-driver)")
    try:
        import selenium  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        _need(False, f"{e.name} not installed (pip install 'cddfuse[serve,test]')")


@pytest.fixture(scope="module")
def server(browser_tools, tiny_weights) -> Iterator[str]:
    proc, url = start_server(tiny_weights)
    try:
        yield url
    finally:
        stop_server(proc)


def _wait(condition, timeout: float = 600, what: str = "condition"):  # (a hang, not a speed, fails it)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_page_fuses_compares_downloads_and_shows_errors(server, tiny_weights, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    rng = np.random.default_rng(5)
    a = write_image(tmp_path / "ir.png", rng.random((40, 56)))
    b = write_image(tmp_path / "vis.png", rng.random((40, 56)))
    small = write_image(tmp_path / "small.png", rng.random((30, 56)))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = make_driver(downloads)
    try:
        driver.get(server + "/")
        _wait(lambda: driver.find_element(By.ID, "label-a").text == "Infrared", what="task labels")
        assert driver.find_element(By.ID, "label-b").text == "Visible"
        driver.find_element(By.ID, "file-a").send_keys(str(a))
        driver.find_element(By.ID, "file-b").send_keys(str(b))
        driver.find_element(By.ID, "fuse-button").click()
        fused = driver.find_element(By.ID, "img-fused")
        _wait(lambda: fused.get_attribute("data-ready") == "true", what="the fused image")
        size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", fused)
        assert size == [56, 40]
        assert driver.find_element(By.ID, "results").is_displayed()
        assert not driver.find_element(By.ID, "progress").is_displayed()

        slider = driver.find_element(By.ID, "slider")
        clip = driver.find_element(By.ID, "compare-clip")
        assert clip.value_of_css_property("width") != "0px"
        before = clip.get_attribute("style")
        slider.send_keys(Keys.END)  # keyboard: the slider is a real <input type=range>
        _wait(lambda: clip.get_attribute("style") != before, what="the slider to move the clip")
        assert "100%" in clip.get_attribute("style")
        slider.send_keys(Keys.HOME)
        _wait(lambda: "width: 0%" in clip.get_attribute("style"), what="the slider back to 0")

        driver.find_element(By.ID, "download").click()
        got = _wait(lambda: [p for p in downloads.glob("*.png")], what="the download")[0]
        _wait(lambda: got.stat().st_size > 0 and not list(downloads.glob("*.crdownload")), what="download end")
        assert got.name == "ir-fused.png"
        cli_out = tmp_path / "cli.png"
        assert main(["fuse", str(a), str(b), "-o", str(cli_out), "--weights", str(tiny_weights),
                     "--device", "cpu", "-q"]) == 0
        assert got.read_bytes() == cli_out.read_bytes()
        assert np.array_equal(read_image(got, keep_integer=True), read_image(cli_out, keep_integer=True))

        driver.find_element(By.ID, "file-b").send_keys(str(small))
        driver.find_element(By.ID, "fuse-button").click()
        error = driver.find_element(By.ID, "error")
        _wait(lambda: error.is_displayed(), what="the error message")
        assert "differ in size (56x40 vs 56x30)" in error.text
        # the page names its own control, not the API field or a command-line flag
        assert "Tick \u201cResize the second image to the first when sizes differ\u201d" in error.text
        assert "--" not in error.text and "resize=true" not in error.text
        label = driver.find_element(By.CSS_SELECTOR, "label[for=resize]").text
        assert label in error.text
        shot = os.environ.get("CDDFUSE_SCREENSHOT")  # to look at the page: a path for a PNG of it here
        if shot:
            driver.save_screenshot(shot)
        driver.find_element(By.ID, "resize").click()
        driver.find_element(By.ID, "fuse-button").click()
        _wait(lambda: not error.is_displayed() and fused.get_attribute("data-ready") == "true", what="a resized fusion")

        # a header bomb as the first image: the page names that image by its label
        from .test_hostile import png_header_only

        bomb = tmp_path / "bomb.png"
        bomb.write_bytes(png_header_only(100_000, 100_000))
        driver.find_element(By.ID, "file-a").send_keys(str(bomb))
        driver.find_element(By.ID, "fuse-button").click()
        _wait(lambda: error.is_displayed(), what="the bomb's error message")
        assert error.text.startswith("The Infrared image is 100000x100000 pixels, more than this server accepts")
        assert "--" not in error.text and "max_pixels" not in error.text
        shot = os.environ.get("CDDFUSE_SCREENSHOT")
        if shot:
            driver.save_screenshot(shot.replace(".png", "-bomb.png"))

        # the favicon: linked from the page and served as a real icon the browser decodes
        icons = driver.execute_script(
            "return [...document.querySelectorAll('link[rel=icon]')].map(l => l.getAttribute('href'))")
        assert "/favicon.ico" in icons
        decoded = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const img = new Image();
            img.onload = () => done([img.naturalWidth, img.naturalHeight]);
            img.onerror = () => done(null);
            img.src = "/favicon.ico";""")
        assert decoded == [32, 32]

        driver.set_window_size(390, 844)  # a phone: one column, nothing wider than the screen
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        driver.quit()
