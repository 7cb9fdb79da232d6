"""Gradio Spaces of captionformer_hf: the demo (``spaces.demo``) and the CHOTA metric widget (``spaces.chota``), and
self-contained Space folders built from the installed package.

``build_space("demo" | "chota", out)`` (``captionformer space build``) writes ``out/`` with ``app.py`` and the Space
card (``README.md``, ``huggingface_hub.SpaceCard``: title, ``sdk: gradio`` with ``sdk_version`` the installed
gradio's, license). The demo Space holds this package as a wheel and a ``requirements.txt`` that installs it from
the folder. The CHOTA Space needs neither the package nor torch: it holds the ``evaluate`` module (``chota.py`` and
the numpy core it imports, :func:`captionformer_hf.metrics.write_chota_module`) and the widget (``chota_widget.py``),
with light requirements (evaluate, numpy, scipy, pycocotools, pycocoevalcap) and ``packages.txt`` (Java, for METEOR
and SPICE); ``evaluate.load("chota")`` works next to the folder, ``evaluate.load("chota.py")`` inside it, and
``evaluate.load("<user>/chota")`` once pushed. ``push_space(folder, repo_id)`` (``captionformer space push``) uploads
a folder.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import shutil
import zipfile

KINDS = ("demo", "chota")
SPACE_MARKER = ".captionformer-space"
LICENSE = "apache-2.0"
PACKAGE = "captionformer_hf"

DEMO_APP = '''"""CaptionFormer demo Space (built by `captionformer space build demo`)."""

from captionformer_hf.spaces.demo import DemoLimits, build_demo, launch

limits = DemoLimits()  # from the environment: CAPTIONFORMER_MAX_FRAMES, CAPTIONFORMER_MAX_UPLOAD_MB, ...
demo = build_demo(limits=limits)

if __name__ == "__main__":
    launch(demo, limits)
'''

CHOTA_APP = '''"""CHOTA metric Space (built by `captionformer space build chota`): the evaluate module of this folder
(chota.py) behind a gradio widget (chota_widget.py); no torch, no captionformer_hf."""

import os

from chota_widget import build_chota_demo

demo = build_chota_demo(os.path.join(os.path.dirname(os.path.abspath(__file__)), "chota.py"))

if __name__ == "__main__":
    demo.queue(max_size=8).launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
'''

def _card(title: str, emoji: str, colors: tuple[str, str], tags: list[str], body: str, description: str | None = None,
          sdk_version: str = "", version: str = "") -> str:
    """A Space card (``huggingface_hub.SpaceCard``): its configuration (gradio at ``sdk_version``, this package's
    license) and ``body`` (``{version}`` replaced by this package's version)."""
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(title=title, emoji=emoji, colorFrom=colors[0], colorTo=colors[1], sdk="gradio",
                         sdk_version=sdk_version, app_file="app.py", pinned=False, license=LICENSE, tags=tags,
                         **({"description": description} if description else {}))
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n" + body.replace("{version}", version)))


DEMO_CARD = """
# CaptionFormer demo

Upload a video (or pick a generated example), set the score threshold, the frame rate and the maximum number of
frames, and get the overlay video (masks, boxes, track ids, captions), an annotated key frame, a table of the
trajectories and the JSON result (the trajectory format of `captionformer_hf`).

The model is `$CAPTIONFORMER_MODEL` (a Hub id or path) or, by default, the tiny CaptionFormer shipped with
`captionformer_hf`, trained on synthetic coloured shapes: it demonstrates the whole system, not real-world quality.

Limits of a request (Space variables): `CAPTIONFORMER_MAX_UPLOAD_MB` (50 MB), `CAPTIONFORMER_MAX_FRAMES` frames
processed (300), `CAPTIONFORMER_MAX_DECODED_FRAMES` frames decoded whatever the sampling rate (3000),
`CAPTIONFORMER_MAX_SIDE` (frames larger than 640 px are downscaled while decoding), `CAPTIONFORMER_MAX_SECONDS` (120 s).

Built with `captionformer space build demo` from captionformer_hf {version} (the wheel in this folder).
"""

CHOTA_DESCRIPTION = ("CHOTA (Captioning Higher Order Tracking Accuracy) for dense video object captioning: "
                     "cbrt(DetA * AssA * CapA).")
CHOTA_CARD = """
# Metric Card for CHOTA

## Metric description
CHOTA extends HOTA (Luiten et al., IJCV 2021) to dense video object captioning (Zhou et al., ICLR 2025):
`CHOTA = cbrt(DetA · AssA · CapA)`.

* **DetA, AssA, LocA, DetRe, DetPr, AssRe, AssPr, HOTA** exactly as TrackEval's `HOTA.eval_sequence` /
  `combine_sequences`: a global alignment score between GT and predicted ids, one Hungarian assignment per frame on
  alignment × IoU, a match counts at α when IoU ≥ α − eps. Box IoU on `[x, y, w, h]` (no +1) or mask IoU
  (pycocotools RLE).
* **CapA**: per video and α, each matched detection pair whose GT caption is non-empty gives a (GT caption,
  predicted caption) pair (the prediction cut at its first newline). Each caption metric is summed over the video's
  pairs (CIDEr-D's idf computed per video) and divided by the pair count; videos combine weighted by their pair
  counts; CapA is the mean of the chosen metrics (CIDEr on pycocoevalcap's ×10 scale). With no pair anywhere CapA = 1.
* Predictions are kept iff `score > score_threshold` (0.5). The published numbers use the single α = 0.5.

The implementation is `captionformer_hf.metrics.compute_chota`, a numpy core validated against TrackEval and
pycocoevalcap to 1e-6; its memory grows with the detections and their overlaps, not frames × tracks × tracks.

## How to use
```python
import evaluate
chota = evaluate.load("chota")      # this folder, from its parent ("<user>/chota" once pushed)
chota = evaluate.load("chota.py")   # from inside this folder
# with captionformer_hf installed: evaluate.load(captionformer_hf.metrics.chota_module_path())
result = chota.compute(predictions=pred_videos, references=gt_videos, iou_type="box", alphas=(0.5,),
                       caption_metrics=("cider", "meteor", "spice"), score_threshold=0.5)
result["CHOTA"], result["DetA"], result["AssA"], result["CapA"]
```
Each video: `{"video_id", "num_frames", "trajectories": [{"track_id", "score", "caption", "frames":
[{"frame_index", "box": [x, y, w, h], "mask_rle", "score"}]}]}` (+ `height`, `width` for string mask RLEs);
`chota.add(prediction=..., reference=...)` / `add_batch` add videos incrementally.

### Inputs
* `iou_type`: `"box"` or `"mask"`; `alphas`: thresholds (`captionformer_hf.metrics.TRACKEVAL_ALPHAS` for 0.05…0.95);
  `score_threshold`.
* `caption_metrics`: subset of `("cider", "meteor", "spice")`; the default is all three, as published. METEOR needs
  Java. SPICE needs Java and the Stanford CoreNLP 3.6.0 jars: install them once, with network, by running
  `python -c "from pycocoevalcap.spice.spice import Spice; Spice()"`. Without them, choose
  `caption_metrics=("cider", "meteor")` (or `("cider",)` without Java); the error says so too.

### Output values
`CHOTA, DetA, AssA, CapA, HOTA, LocA, DetRe, DetPr, AssRe, AssPr, HOTA_TP, HOTA_FN, HOTA_FP, TP_with_caps,
CapA_<metric>` (means over α), `per_alpha` (each field as a list over α) and `per_video`.

## Limitations and bias
CIDEr-D's idf is computed per video, so a video whose pairs all share one caption scores CIDEr 0 even when the
prediction is right (a property of the published evaluator, kept for comparability). METEOR/SPICE need Java.

## Requirements
`evaluate`, numpy and scipy; pycocotools for mask IoU; pycocoevalcap and Java for METEOR / SPICE
(`requirements.txt`, `packages.txt`). Not torch, not captionformer_hf: the files of this folder are the whole metric.
The widget runs each request in a worker process under a deadline (`CHOTA_MAX_SECONDS`, 120 s).

## Citation
See `chota.py`. Built with `captionformer space build chota` from captionformer_hf {version}.
"""


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out_dir: str) -> str:
    """A ``py3-none-any`` wheel of the installed package (its files, metadata and entry points), written into
    ``out_dir``; returns its path. Deterministic for the same files.

    Written here rather than with ``pip wheel`` / ``build``: those build from a source tree (``pyproject.toml``), and
    an installed package (from a wheel, in a Space or a user's environment) has none; this packs what is installed."""
    version = package_version()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../captionformer_hf
    dist_info = f"{PACKAGE}-{version}.dist-info"
    path = os.path.join(out_dir, f"{PACKAGE}-{version}-py3-none-any.whl")
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
        metadata = distribution.read_text("METADATA")
        entry_points = distribution.read_text("entry_points.txt")
    except importlib.metadata.PackageNotFoundError:
        metadata, entry_points = None, None
    if not metadata:
        metadata = f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {version}\n"
    entry_points = entry_points or "[console_scripts]\ncaptionformer = captionformer_hf.cli:main\n"
    records = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        def add(name: str, data: bytes):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
            records.append(_record_line(name, data))

        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for file in sorted(files):
                if file.endswith((".pyc", ".pyo")):
                    continue
                full = os.path.join(folder, file)
                name = os.path.join(PACKAGE, os.path.relpath(full, root)).replace(os.sep, "/")
                with open(full, "rb") as f:
                    add(name, f.read())
        add(f"{dist_info}/METADATA", metadata.encode())
        add(f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: captionformer_hf\nRoot-Is-Purelib: true\n"
                                  b"Tag: py3-none-any\n")
        add(f"{dist_info}/entry_points.txt", entry_points.encode())
        record = "\n".join(records + [f"{dist_info}/RECORD,,"]) + "\n"
        info = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2026, 1, 1, 0, 0, 0))
        wheel.writestr(info, record)
    return path


def build_space(kind: str, out: str, overwrite: bool = False) -> str:
    """Write the self-contained Space folder ``out`` for ``kind`` (``"demo"`` or ``"chota"``), atomically; returns
    ``out``."""
    from ..utils import atomic_directory

    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}")
    import gradio

    version = package_version()
    # --overwrite replaces only a folder this command built (its marker file), never another
    with atomic_directory(out, overwrite=overwrite, argument="--out", marker=SPACE_MARKER) as tmp:
        if kind == "demo":
            wheel = build_wheel(tmp)
            requirements = f"./{os.path.basename(wheel)}\n"
            card = _card("CaptionFormer", "🎞️", ("blue", "purple"), ["dense-video-object-captioning", "video",
                         "tracking"], DEMO_CARD, sdk_version=gradio.__version__, version=version)
            app = DEMO_APP
        else:
            from ..metrics import CHOTA_REQUIREMENTS, write_chota_module

            write_chota_module(tmp)
            shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "chota.py"),
                            os.path.join(tmp, "chota_widget.py"))
            requirements = CHOTA_REQUIREMENTS
            with open(os.path.join(tmp, "packages.txt"), "w", encoding="utf-8") as f:
                f.write("default-jre-headless\n")  # METEOR and SPICE run on Java
            card = _card("CHOTA", "🎬", ("indigo", "green"), ["evaluate", "metric", "dense-video-object-captioning"],
                         CHOTA_CARD, description=CHOTA_DESCRIPTION, sdk_version=gradio.__version__, version=version)
            app = CHOTA_APP
        with open(os.path.join(tmp, "requirements.txt"), "w", encoding="utf-8") as f:
            f.write(requirements)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        with open(os.path.join(tmp, "app.py"), "w", encoding="utf-8") as f:
            f.write(app)
    return out


def local_run_command(kind: str, out: str) -> str:
    """The shell command that runs a built Space folder locally as printed by ``captionformer space build``: a
    fresh virtual environment with the Space's requirements (and gradio), then its ``app.py``."""
    import shlex

    import gradio

    folder = shlex.quote(os.path.abspath(out))
    return (f"cd {folder} && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt "
            f"'gradio=={gradio.__version__}' && .venv/bin/python app.py")


def push_space(folder: str, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a folder written by :func:`build_space` to the Space ``repo_id`` (created as a gradio Space if needed);
    returns the commit URL."""
    from huggingface_hub import HfApi

    for name in ("app.py", "README.md", "requirements.txt"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise ValueError(f"`folder`: {folder} has no {name}; build it with `captionformer space build`")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    return str(api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="space"))


__all__ = ["KINDS", "build_space", "build_wheel", "local_run_command", "push_space"]
