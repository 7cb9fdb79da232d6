"""Every code block of README.md and docs/ runs as written, so that a block that fails fails here.

Each ```python block runs in a fresh process, each ```bash command line in bash, in a folder prepared with the files
the blocks name (``video.mp4``, ``a.mp4``...: sample videos; ``preds.json`` / ``gt.json``: a prediction and its ground
truth). ```json blocks must parse (docs/format.md's are validated as the trajectory format). The substitutions, the
only differences from what a reader types:

- sizes: the paper-size ``CaptionFormerConfig(...)`` becomes the toy config (``captionformer_hf.toy.toy_config``) with
  64 x 64 inputs; training commands run one step on a few synthetic videos (``--max-steps 1 ...``), the default model's
  reproduction (``recipes/train_default.py``) with ``--smoke`` (a few videos and steps);
- devices: ``"cuda"`` becomes ``"cpu"`` where no GPU is present;
- the environment: command 1's ``python3 -m venv .venv && .venv/bin/pip install ...`` steps are skipped (the tests
  run in a set-up environment) and ``.venv/bin/`` points to it; ``bash .ci/run`` (this very test run) is skipped;
- what needs the network or hardware not here (the Hub, the official checkpoints, 8 GPUs): those command lines
  (``... push``, ``--push-to-hub``, ``captionformer convert``, ``accelerate launch``) are parsed by the command-line
  parser, which checks every flag and value, and not run;
- a server: ``launch()`` returns at once (``prevent_thread_lock``) and is closed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent


def blocks(path: Path) -> list[tuple[str, str, int]]:
    text = path.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), text[: m.start()].count("\n") + 1)
            for m in re.finditer(r"```(\w*)\n(.*?)```", text, flags=re.S)]


ALL_BLOCKS = [(path, lang, body, line) for path in DOCS for lang, body, line in blocks(path)]
CUDA = False
try:
    import torch

    CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    pass


PYTHON_SUBSTITUTIONS = [
    (r"CaptionFormerConfig\(clip_length=5\)", "__import__('captionformer_hf.toy').toy.toy_config(clip_length=5)"),
    (r"torch\.randn\(2, 5, 3, 480, 640\)", "torch.randn(2, 5, 3, 64, 64)"),
    (r"torch\.randn\(48, 3, 480, 640\)", "torch.randn(6, 3, 64, 64)"),
]
if not CUDA:
    PYTHON_SUBSTITUTIONS += [(r'"cuda"', '"cpu"'), (r"torch\.bfloat16", "torch.float32")]

CLOSING_LAUNCH = "launch(prevent_thread_lock=True); __import__('gradio').close_all()"
PARSE_ONLY = re.compile(r"(\bpush\b|--push-to-hub|^captionformer convert\b|^accelerate launch\b)")


def _command_lines(body: str) -> list[str]:
    joined = body.replace("\\\n", " ")
    lines = []
    for line in joined.splitlines():
        line = line.split(" # ")[0].strip() if " # " in line else line.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _bash_substitutions(line: str, work: Path) -> str | None:
    """The line as run here, or None when it is skipped (see the module docstring)."""
    if line.startswith("bash .ci/run"):
        return None
    line = re.sub(r"python3 -m venv \.venv && \.venv/bin/pip install [^&]*&& \.venv/bin/pip install [^&]*&& ", "", line)
    line = line.replace(".venv/bin/", f"{BIN}/")
    if line.startswith("python recipes/train_default.py"):
        line = f"{sys.executable} {ROOT / 'recipes' / 'train_default.py'} --smoke --out {work / 'reproduce'}"
    elif line.startswith("captionformer train"):
        line += (f" --max-steps 1 --dataset synthetic --synthetic-videos 4 --synthetic-frames 4 --output-dir "
                 f"{work / 'train'} --save-every 1 --num-workers 0")
    return line.replace("captionformer ", f"{BIN}/captionformer ", 1) if line.startswith("captionformer ") else line


def _parse_only(line: str) -> None:
    """Check a command's flags with the command-line parser (no network, no run)."""
    words = shlex.split(line)
    if words[0] == "accelerate":  # accelerate launch [...] -m captionformer_hf.cli <args>
        words = ["captionformer", *words[words.index("captionformer_hf.cli") + 1 :]]
    if words[0].endswith("captionformer"):
        from captionformer_hf.cli import build_parser

        build_parser().parse_args(words[1:])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with the files the blocks name."""
    from captionformer_hf.cli import main
    from captionformer_hf.data.synthetic import generate_video, sample_video_config, write_video

    folder = tmp_path_factory.mktemp("docs")
    for name, seed in (("video.mp4", 0), ("a.mp4", 1), ("b.mp4", 2), ("c.mp4", 3)):
        video = generate_video(seed, sample_video_config(num_frames=8))
        write_video(video["frames"], folder / name, fps=8)
    assert main(["sample-video", str(folder / "shapes.mp4"), "--frames", "8", "--annotations",
                 str(folder / "gt.json")]) == 0
    reference = json.loads((folder / "gt.json").read_text())
    prediction = {**reference, "trajectories": [{**t, "score": 0.9} for t in reference["trajectories"]]}
    (folder / "preds.json").write_text(json.dumps([prediction]))
    (folder / "recipes").symlink_to(ROOT / "recipes")
    return folder


@pytest.mark.parametrize("path, lang, body, line", ALL_BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}:{line}" for p, _, _, line in ALL_BLOCKS])
def test_code_block_runs_as_written(path, lang, body, line, work):
    if lang == "python":
        code = body
        for pattern, replacement in PYTHON_SUBSTITUTIONS:
            code = re.sub(pattern, replacement, code)
        code = code.replace("launch()", CLOSING_LAUNCH)
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"))
        result = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, env=env,
                                timeout=600)
        assert result.returncode == 0, f"{path.name}:{line}\n{code}\n{result.stderr[-3000:]}"
    elif lang == "bash":
        for command in _command_lines(body):
            if PARSE_ONLY.search(command):
                _parse_only(command)
                continue
            command = _bash_substitutions(command, work)
            if command is None:
                continue
            if command.startswith("python -c"):
                command = command.replace("launch()", CLOSING_LAUNCH)
            result = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True, text=True, timeout=900,
                                    env=dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{BIN}:{os.environ['PATH']}"))
            assert result.returncode == 0, f"{path.name}:{line}: {command}\n{result.stderr[-3000:]}"
    elif lang == "json":
        text = body.strip()
        data = json.loads(text if text.startswith(("{", "[")) else "{" + text + "}")
        if path.name == "format.md":
            from captionformer_hf.processing import validate_video

            video = data if "trajectories" in data else {"video_id": "v", "num_frames": 48, "height": 192,
                                                         "width": 256, "trajectories": [data]}
            validate_video(video)
    else:
        assert lang in ("text", ""), f"{path.name}:{line}: a ```{lang} block the docs test does not know"


def test_the_docs_have_code_blocks():
    assert sum(1 for _, lang, _, _ in ALL_BLOCKS if lang == "python") >= 4
    assert sum(1 for _, lang, _, _ in ALL_BLOCKS if lang == "bash") >= 4
