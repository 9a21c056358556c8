"""The web page in headless Chromium: build the form from /model, upload, see label and bars."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mmfuse.serve.app import create_app
from serve_helpers import serving
from test_serve import CLASSES, tiny_model

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (`make setup` apt-installs chromium)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The service on a free loopback port, in a thread; yields (base URL, data folder)."""
    model_dir, data_dir = tiny_model(tmp_path_factory)
    with serving(create_app(model_dir), lifespan="on") as (host, port):
        yield f"http://{host}:{port}/", data_dir


def test_page_predicts_and_draws_the_bars(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, data_dir = server
    row = pd.read_csv(data_dir / "manifest.csv").iloc[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]", timeout=10_000)
            assert page.locator("#fields input[type=file]").count() == 2  # audio and image
            page.set_input_files("input[name=image]", str(data_dir / row["image"]))
            page.set_input_files("input[name=audio]", str(data_dir / row["audio"]))
            page.fill("textarea[name=text]", row["text"])
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=10_000)

            assert page.inner_text("#label") in CLASSES
            probabilities = page.locator("#probabilities .bar")
            assert probabilities.count() == len(CLASSES)
            values = [
                float(v) for v in probabilities.evaluate_all("bs => bs.map(b => b.dataset.value)")
            ]
            assert sum(values) == pytest.approx(1.0, abs=1e-4)
            widths = probabilities.evaluate_all(
                "bs => bs.map(b => b.getBoundingClientRect().width)"
            )
            assert max(widths) > 0
            assert page.locator("#weights .bar").count() == 3
            assert "audio, image, text" in page.inner_text("#latency")

            # A bad upload shows the server's message, naming the field.
            page.set_input_files("input[name=image]", str(data_dir / row["audio"]))
            page.click("#submit")
            page.wait_for_selector("#error:not([hidden])", timeout=10_000)
            assert "image" in page.inner_text("#error") and "415" in page.inner_text("#error")

            page.set_input_files("input[name=image]", str(data_dir / row["image"]))
            page.click("#submit")
            page.wait_for_selector("#error", state="hidden", timeout=10_000)
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.is_file() and shot.stat().st_size > 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
