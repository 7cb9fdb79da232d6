"""The Gradio Spaces: headless smoke tests through gradio_client, and an end-to-end test in headless Chromium.

Screenshots go to $CAPTIONFORMER_ARTIFACTS (default: tests/artifacts)."""

import importlib.util
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CAPTIONFORMER_ARTIFACTS", ROOT / "tests" / "artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_app(name: str, env: dict):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        spec = importlib.util.spec_from_file_location(f"space_{name}", ROOT / "spaces" / name / "app.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return module


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory):
    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
    from captionformer_hf.toy import toy_config, toy_processor

    folder = tmp_path_factory.mktemp("space-model")
    torch.manual_seed(0)
    config = toy_config(clip_length=2, score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1)
    CaptionFormerForDenseVideoObjectCaptioning(config).save_pretrained(folder)
    toy_processor(clip_length=2).save_pretrained(folder)
    module = load_app("demo", {"CAPTIONFORMER_MODEL": str(folder), "CAPTIONFORMER_MAX_FRAMES": "40",
                               "CAPTIONFORMER_EXAMPLES": str(tmp_path_factory.mktemp("examples"))})
    port = free_port()
    module.demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield module, f"http://127.0.0.1:{port}/"
    module.demo.close()


@pytest.fixture(scope="module")
def chota_app():
    module = load_app("chota", {})
    port = free_port()
    module.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield module, f"http://127.0.0.1:{port}/"
    module.demo.close()


def test_demo_through_gradio_client(demo_app):
    module, url = demo_app
    client = gradio_client.Client(url, verbose=False)
    example = module.make_examples()[0]
    overlay, key_frame, table, json_path, summary = client.predict(
        gradio_client.handle_file(example), 0.0, 0, 20, api_name="/caption"
    )
    assert os.path.exists(overlay["video"] if isinstance(overlay, dict) else overlay)
    assert os.path.exists(key_frame)
    rows = table["data"] if isinstance(table, dict) else table
    assert rows and len(rows[0]) == 6
    result = json.loads(Path(json_path).read_text())
    assert len(result["trajectories"]) == len(rows) and "trajectories" in summary
    # bounded work: a clear message beyond the frame limit
    with pytest.raises(Exception, match="maximum value 40|At most 40 frames"):
        client.predict(gradio_client.handle_file(example), 0.0, 0, 41, api_name="/caption")


def test_chota_space_through_gradio_client(chota_app):
    module, url = chota_app
    client = gradio_client.Client(url, verbose=False)
    table, full, summary = client.predict(module.EXAMPLE, None, module.EXAMPLE, None, "box", "0.5", ["cider"], 0.5,
                                          api_name="/compute")
    rows = {row[0]: row[1] for row in (table["data"] if isinstance(table, dict) else table)}
    assert rows["DetA"] == 1.0 and rows["AssA"] == 1.0
    assert "1 videos" in summary
    with pytest.raises(Exception, match="not valid JSON"):
        client.predict("{", None, module.EXAMPLE, None, "box", "0.5", ["cider"], 0.5, api_name="/compute")


# ---------------------------------------------------------------------------------------- real browser (Chromium)
def chromium_paths():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return browser, driver


@pytest.fixture
def browser():
    selenium = pytest.importorskip("selenium")  # noqa: F841
    binary, driver_path = chromium_paths()
    if not (binary and driver_path):
        pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def wait_for(condition, timeout=120.0, interval=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting for the page")


def test_demo_in_a_real_browser(demo_app, browser):
    from selenium.webdriver.common.by import By

    module, url = demo_app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get(url)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#input-video input[type=file]"))
    browser.save_screenshot(str(ARTIFACTS / "demo-start.png"))
    upload = browser.find_element(By.CSS_SELECTOR, "#input-video input[type=file]")
    upload.send_keys(module.make_examples()[0])
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#input-video video"))
    browser.find_element(By.CSS_SELECTOR, "#run-button").click()

    def table_filled():
        cells = browser.find_elements(By.CSS_SELECTOR, "#trajectories tbody tr td")
        texts = [t for t in ((c.get_attribute("textContent") or "").strip() for c in cells) if t]
        return texts if len(texts) >= 6 else None

    cells = wait_for(table_filled, timeout=180)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#overlay-video video"), timeout=60)
    browser.save_screenshot(str(ARTIFACTS / "demo-result.png"))
    assert any("trajectories" in (e.get_attribute("textContent") or "") for e in browser.find_elements(By.CSS_SELECTOR, "#summary"))
    assert cells
