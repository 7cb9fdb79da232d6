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

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CAPTIONFORMER_ARTIFACTS", ROOT / "tests" / "artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_app(folder: Path, env: dict):
    """Import a built Space's app.py as the Space runs it (with its environment variables)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        spec = importlib.util.spec_from_file_location(f"space_{folder.name}", folder / "app.py")
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
def built(tmp_path_factory):
    from captionformer_hf.cli import main

    root = tmp_path_factory.mktemp("spaces")
    for kind in ("demo", "chota"):
        assert main(["space", "build", kind, "--out", str(root / kind)]) == 0
    return root


@pytest.fixture(scope="module")
def demo_app(built, tmp_path_factory):
    """The demo Space as built, serving the embedded default model (what a visitor sees)."""
    module = load_app(built / "demo", {"CAPTIONFORMER_MAX_FRAMES": "40",
                                       "CAPTIONFORMER_EXAMPLES": str(tmp_path_factory.mktemp("examples"))})
    port = free_port()
    module.demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield module, f"http://127.0.0.1:{port}/"
    module.demo.close()


@pytest.fixture(scope="module")
def chota_app(built, monkeypatch_module):
    monkeypatch_module.syspath_prepend(str(built / "chota"))  # the Space runs app.py from its folder
    module = load_app(built / "chota", {})
    port = free_port()
    module.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield module, f"http://127.0.0.1:{port}/"
    module.demo.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_built_space_folders_are_self_contained(built, tmp_path):
    import subprocess
    import sys
    import zipfile

    for kind, title in (("demo", "CaptionFormer"), ("chota", "CHOTA")):
        folder = built / kind
        from huggingface_hub import SpaceCard

        card = SpaceCard.load(folder / "README.md")
        assert (card.data.title, card.data.sdk, card.data.sdk_version) == (title, "gradio", gradio.__version__)
        assert card.data.license == "apache-2.0" and "{version}" not in card.text
    wheel = next((built / "demo").glob("captionformer_hf-*-py3-none-any.whl"))
    assert (built / "demo" / "requirements.txt").read_text().splitlines()[0] == f"./{wheel.name}"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "captionformer_hf/spaces/demo.py" in names and "captionformer_hf/checkpoints/default/model.safetensors" in names
    assert not any("__pycache__" in n for n in names)
    # the CHOTA Space needs neither the package nor torch: its own files, light requirements, Java for METEOR/SPICE
    chota = built / "chota"
    assert not list(chota.glob("*.whl"))
    requirements = (chota / "requirements.txt").read_text()
    assert "captionformer" not in requirements and "torch" not in requirements and "evaluate" in requirements
    assert (chota / "packages.txt").read_text().split() == ["default-jre-headless"]
    assert {"app.py", "chota.py", "chota_core.py", "hota.py", "caption_scores.py", "formats.py",
            "trajectory_captionformer.py", "chota_widget.py"} <= {p.name for p in chota.iterdir()}


def test_chota_module_loads_without_the_package_from_the_folder_its_parent_and_the_hub_layout(built, tmp_path):
    """evaluate.load of the built folder, in a process where captionformer_hf cannot be imported: from the folder's
    parent ("chota") and from inside it ("chota.py"); the same numbers as compute_chota. (Its requirements hold
    neither torch nor the package: the test above.)"""
    from conftest import run_without_the_package

    from captionformer_hf.metrics import compute_chota
    from captionformer_hf.spaces.chota import EXAMPLE_PREDICTIONS, EXAMPLE_REFERENCES

    predictions, references = json.loads(EXAMPLE_PREDICTIONS), json.loads(EXAMPLE_REFERENCES)
    expected = compute_chota(predictions, references, caption_metrics=("cider",), alphas=(0.5, 0.75))
    (tmp_path / "inputs.json").write_text(json.dumps([predictions, references]))
    body = f"""
    import json, os, sys
    import evaluate
    predictions, references = json.load(open({str(tmp_path / "inputs.json")!r}))
    results = []
    os.chdir({str(built)!r})
    results.append(evaluate.load("chota").compute(predictions=predictions, references=references,
                                                  caption_metrics=["cider"], alphas=[0.5, 0.75]))
    os.chdir("chota")
    results.append(evaluate.load("chota.py").compute(predictions=predictions, references=references,
                                                     caption_metrics=["cider"], alphas=[0.5, 0.75]))
    json.dump(results, open({str(tmp_path / "results.json")!r}, "w"))
    """
    run_without_the_package(body, tmp_path)
    for result in json.loads((tmp_path / "results.json").read_text()):
        for key in ("CHOTA", "DetA", "AssA", "CapA", "HOTA", "LocA"):
            assert result[key] == pytest.approx(expected[key], abs=1e-12)
    # a meaningful example: at alpha 0.5, 20 of 24 detections matched, 4 missed, 4 false (DetA 20 / 28); the boxes
    # are 3 px off (IoU 441 / 711 = 0.62), so none match at 0.75; captions partly wrong
    assert expected["per_alpha"]["DetA"] == pytest.approx([20 / 28, 0.0]) and expected["per_alpha"]["CapA"][0] > 1.0


def test_space_push_uploads_the_folder_as_a_gradio_space(built, monkeypatch):
    import huggingface_hub

    from captionformer_hf.cli import main

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload", kwargs))
            return "https://huggingface.co/spaces/user/demo/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["space", "push", str(built / "demo"), "--repo-id", "user/demo"]) == 0
    assert calls[0] == ("create", "user/demo", {"repo_type": "space", "space_sdk": "gradio", "private": False,
                                                 "exist_ok": True})
    assert calls[1][1] == {"folder_path": str(built / "demo"), "repo_id": "user/demo", "repo_type": "space"}
    assert main(["space", "push", str(built), "--repo-id", "user/demo"]) == 2  # not a Space folder


def test_demo_through_gradio_client(demo_app):
    from captionformer_hf.spaces.demo import make_examples

    module, url = demo_app
    client = gradio_client.Client(url, verbose=False)
    example = make_examples()[0]
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
    with pytest.raises(Exception, match="maximum value 40|between 1 and 40"):
        client.predict(gradio_client.handle_file(example), 0.0, 0, 41, api_name="/caption")


def test_demo_bounds_every_request(toy_model_dir, tmp_path):
    """Resolution, decoded frames, time and inputs are bounded, each with a message saying what to change."""
    from captionformer_hf.data.synthetic import write_video
    from captionformer_hf.defaults import load_pipeline
    from captionformer_hf.spaces.demo import DemoHandler, DemoLimits

    import numpy as np

    pipe = load_pipeline(toy_model_dir)
    limits = DemoLimits(max_frames=40, max_upload_mb=1, max_side=64, max_decoded_frames=30, max_seconds=60)
    handler = DemoHandler(pipe, limits)
    big = tmp_path / "big.mp4"  # 4 frames of 480x640: processed at 48x64, reported in source pixels
    write_video(np.random.default_rng(0).integers(0, 255, (4, 480, 640, 3), dtype=np.uint8), big, fps=4)
    overlay, key_frame, rows, json_path, summary = handler(str(big), 0.0, 0, 10)
    result = json.loads(Path(json_path).read_text())
    assert (result["height"], result["width"]) == (480, 640) and "downscaled" in summary
    assert key_frame.shape[:2] == (48, 64)  # what was processed: the downscaled frames
    long = tmp_path / "long.mp4"  # 60 frames sampled at 1 fps still decode all 60: refused
    write_video(np.zeros((60, 32, 32, 3), np.uint8), long, fps=8)
    with pytest.raises(ValueError, match="has 60 frames; at most 30 can be decoded"):
        handler(str(long), 0.0, 1, 10)
    with pytest.raises(ValueError, match="took longer than 0 s"):
        DemoHandler(pipe, DemoLimits(max_frames=40, max_upload_mb=1, max_side=64, max_decoded_frames=30,
                                     max_seconds=0))(str(big), 0.0, 0, 10)
    huge = tmp_path / "huge.mp4"
    huge.write_bytes(b"0" * (2 * 2**20))
    with pytest.raises(ValueError, match="at most 1 MB"):
        handler(str(huge), 0.0, 0, 10)
    for args, message in (((None, 0.5, 0, 10), "Upload a video"), ((str(tmp_path / "gone.mp4"), 0.5, 0, 10), "did not arrive"),
                          ((str(big), 1.5, 0, 10), "between 0 and 1"), ((str(big), 0.5, float("inf"), 10), "must be a number"),
                          ((str(big), 0.5, 0, 41), "between 1 and 40"), ((str(big), 0.5, 0, 2.5), "whole number")):
        with pytest.raises(ValueError, match=message):
            handler(*args)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="could not open"):
        handler(str(corrupt), 0.5, 0, 10)


def test_chota_space_through_gradio_client(chota_app):
    from captionformer_hf.metrics import compute_chota
    from captionformer_hf.spaces.chota import EXAMPLE_PREDICTIONS, EXAMPLE_REFERENCES

    module, url = chota_app
    client = gradio_client.Client(url, verbose=False)
    # the outputs are labelled in the API
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/compute"]
    assert [r["label"] for r in api["returns"]] == ["Results", "Full result (per alpha, per video)", "Summary"]
    table, full, summary = client.predict(EXAMPLE_PREDICTIONS, None, EXAMPLE_REFERENCES, None, "box", "0.5",
                                          ["cider"], 0.5, api_name="/compute")
    expected = compute_chota(json.loads(EXAMPLE_PREDICTIONS), json.loads(EXAMPLE_REFERENCES),
                             caption_metrics=("cider",))
    rows = {row[0]: row[1] for row in (table["data"] if isinstance(table, dict) else table)}
    assert rows["CHOTA"] == round(expected["CHOTA"], 4) and rows["DetA"] == round(20 / 28, 4)
    assert "2 videos" in summary and f"{expected['CHOTA']:.4f}" in summary
    with pytest.raises(Exception, match="not valid JSON"):
        client.predict("{", None, EXAMPLE_REFERENCES, None, "box", "0.5", ["cider"], 0.5, api_name="/compute")


def test_chota_space_shows_every_error_and_stops_a_request_at_its_deadline(tmp_path, monkeypatch):
    """A metric that cannot run answers with its message (not a bare error), and a request that runs over its deadline
    is stopped with its worker while the next request is served."""
    from captionformer_hf.metrics import chota_module_path
    from captionformer_hf.spaces.chota import EXAMPLE_PREDICTIONS, EXAMPLE_REFERENCES, DeadlineRunner

    monkeypatch.setenv("PATH", "/nonexistent")  # no Java: METEOR cannot run
    runner = DeadlineRunner(chota_module_path(), max_seconds=60)
    try:
        with pytest.raises(ValueError, match="METEOR needs a Java runtime"):
            runner(EXAMPLE_PREDICTIONS, None, EXAMPLE_REFERENCES, None, "box", "0.5", ["cider", "meteor"], 0.5)
        runner.max_seconds = 0.001
        with pytest.raises(TimeoutError, match="longer than 0.001 s and was stopped"):
            runner(EXAMPLE_PREDICTIONS, None, EXAMPLE_REFERENCES, None, "box", "0.5", ["cider"], 0.5)
        runner.max_seconds = 60
        rows, result, _ = runner(EXAMPLE_PREDICTIONS, None, EXAMPLE_REFERENCES, None, "box", "0.5", ["cider"], 0.5)
        assert result["DetA"] == pytest.approx(20 / 28)
    finally:
        runner.close()


def test_chota_space_reads_only_what_the_user_gives(tmp_path):
    """Pasted text is JSON, never a server path: a path answers the same as any non-JSON text, and a JSON string
    naming a server file is refused without opening it."""
    from captionformer_hf.spaces.chota import EXAMPLE, compute, parse_input

    with pytest.raises(ValueError, match="both pasted and uploaded"):
        parse_input(EXAMPLE, str(tmp_path), "predictions")
    secret = tmp_path / "trajectories.json"
    secret.write_text(EXAMPLE)
    for pasted in ("/etc/passwd", str(secret), str(tmp_path / "missing.json")):
        with pytest.raises(ValueError, match="not valid JSON"):
            parse_input(pasted, None, "predictions")
    for pasted in ('"/etc/passwd"', json.dumps(str(secret))):
        with pytest.raises(ValueError, match="must be a JSON list of videos or a JSON object"):
            parse_input(pasted, None, "predictions")
    assert parse_input(None, str(secret), "references") == json.loads(EXAMPLE)  # an upload is read
    with pytest.raises(ValueError, match="larger than 0 MB"):
        parse_input(None, str(secret), "references", max_mb=0)

    class Module:
        def compute(self, **kwargs):
            raise AssertionError("must not be reached")

    with pytest.raises(ValueError, match="alphas must be numbers"):
        compute(Module(), EXAMPLE, None, EXAMPLE, None, "box", "half", ["cider"], 0.5)
    with pytest.raises(ValueError, match="score threshold must be a number"):
        compute(Module(), EXAMPLE, None, EXAMPLE, None, "box", "0.5", ["cider"], None)


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

    from captionformer_hf.spaces.demo import make_examples

    module, url = demo_app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get(url)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#input-video input[type=file]"))
    browser.save_screenshot(str(ARTIFACTS / "demo-start.png"))
    upload = browser.find_element(By.CSS_SELECTOR, "#input-video input[type=file]")
    upload.send_keys(make_examples()[0])
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
    # the first example (seed 1000): a purple circle, a blue square and a green circle; the default model names
    # each one's colour and shape in its caption and its shape as the category
    def whole_table():  # every row rendered (the first row can be there before the others)
        text = browser.find_element(By.CSS_SELECTOR, "#trajectories").get_attribute("textContent") or ""
        return text if text.count("moving") + text.count("bouncing") >= 3 else None

    text = wait_for(whole_table, timeout=60)
    for colour, shape in (("purple", "circle"), ("blue", "square"), ("green", "circle")):
        assert f"a {colour} {shape}" in text, text
