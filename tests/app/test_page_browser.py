"""The page in a real browser: headless Chromium (Debian's package, driven by Playwright) uploads a lesion and finds
the probability, the heatmap and the research-tool statement. Skipped where Chromium or Playwright is missing."""

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from melanoma.app.server import create_app
from tests.inference.fake_runs import write_evaluation

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium)")

# Offline-friendly flags: without the background-networking ones Chromium keeps dialling out from a closed network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def server_url(trained_run: Path, tmp_path: Path) -> Iterator[str]:
    """The app for a copy of the run with validation thresholds, served by uvicorn on 127.0.0.1, a free port."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    write_evaluation(
        run, "data-val", "val", {"specificity_at_95_sensitivity": 0.05, "sensitivity_at_95_specificity": 0.9}
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(run, device="cpu"), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(300):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_page_uploads_a_lesion_and_shows_probability_and_heatmap(server_url: str, raw_data, tmp_path: Path) -> None:
    image = sorted(raw_data[0].iterdir())[0]
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto(server_url)
            page.wait_for_function("document.querySelectorAll('#site option').length > 1", timeout=30_000)
            assert "Research tool, not a diagnosis." in page.inner_text("#disclaimer")
            assert "val split of data" in page.inner_text("#model-info")
            page.set_input_files("#image", str(image))
            page.fill("#age", "55")
            page.select_option("#sex", "male")
            page.select_option("#site", "upper extremity")
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            assert page.inner_text("#probability").rstrip("%)").split(" (")[0].replace(".", "", 1).isdigit()
            page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=30_000)
            assert page.get_attribute("#heatmap", "src").startswith("data:image/png;base64,")
            assert "threshold" in page.inner_text("#operating-summary")
            assert page.locator("#operating-points li").count() == 2
            assert page.is_hidden("#error")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            if os.environ.get("MELANOMA_SCREENSHOT"):
                shutil.copy(tmp_path / "page.png", os.environ["MELANOMA_SCREENSHOT"])
        finally:
            browser.close()
