import logging
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers

transformers.logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)
torch.set_num_threads(2)


@pytest.fixture
def toy_config():
    from captionformer_hf.toy import toy_config as make

    return make


def write_toy_model(folder, clip_length=2):
    """An untrained toy model that keeps every query (thresholds 0) saved with its processor into ``folder``."""
    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
    from captionformer_hf.toy import toy_config as make_config, toy_processor

    torch.manual_seed(0)
    config = make_config(clip_length=clip_length, score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0,
                         hysteresis_min_length=1)
    CaptionFormerForDenseVideoObjectCaptioning(config).save_pretrained(folder)
    toy_processor(clip_length=clip_length).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory):
    """An untrained toy model folder that keeps every query (see :func:`write_toy_model`), written once."""
    return write_toy_model(tmp_path_factory.mktemp("toy-model"))


def make_labels(batch_size, num_frames, num_objects=2, size=64, seed=0, with_captions=True):
    """Targets of square objects at known places; captions of 5 tokens."""
    generator = torch.Generator().manual_seed(seed)
    labels = []
    for _ in range(batch_size):
        masks = torch.zeros(num_objects, num_frames, size, size)
        boxes = torch.zeros(num_objects, num_frames, 4)
        for n in range(num_objects):
            for t in range(num_frames):
                x0, y0 = (torch.randint(0, size // 2, (2,), generator=generator)).tolist()
                w, h = (torch.randint(8, size // 2, (2,), generator=generator)).tolist()
                masks[n, t, y0 : y0 + h, x0 : x0 + w] = 1
                boxes[n, t] = torch.tensor([(x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size])
        target = {
            "class_labels": torch.randint(0, 3, (num_objects,), generator=generator),
            "mask_labels": masks,
            "boxes": boxes,
        }
        if with_captions:
            target["caption_ids"] = torch.randint(3, 64, (num_objects, 5), generator=generator)
            target["caption_attention_mask"] = torch.ones(num_objects, 5, dtype=torch.long)
        labels.append(target)
    return labels


_BLOCK_THE_PACKAGE = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "captionformer_hf":
            raise ImportError("captionformer_hf is blocked in this test")
sys.meta_path.insert(0, _Block())
"""


def run_without_the_package(body: str, tmp_path) -> None:
    """Run ``body`` in a fresh, offline Python process where ``captionformer_hf`` cannot be imported (remote code
    comes from its own module cache); fail with the process's error unless ``body`` ran to its end without importing
    the package."""
    script = (_BLOCK_THE_PACKAGE + textwrap.dedent(body)
              + '\nassert "captionformer_hf" not in sys.modules\nprint("RAN-WITHOUT-THE-PACKAGE")\n')
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "RAN-WITHOUT-THE-PACKAGE" in out.stdout, out.stderr[-3000:]
