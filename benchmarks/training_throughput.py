"""Training throughput: optimizer steps per second and peak memory of the training loop (accelerate, CPU), tiny
test configuration and the embedded default's recipe configuration, on synthetic clips.

    python benchmarks/training_throughput.py [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
from captionformer_hf.training import TrainingConfig, train
values = json.loads(sys.argv[1])
result = train(TrainingConfig(**values))
steps, seconds = result["steps"], result["seconds"]
print(json.dumps({"steps_per_s": steps / seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "recipes", "default_synthetic.json")) as f:
        recipe = json.load(f)
    setups = {
        "tiny test config, batch 4 clips of 2 frames, 64px": dict(
            model_overrides={"clip_length": 2, "num_labels": 4}, batch_size=4, input_size=64),
        "default recipe config, batch 8 clips of 2 frames, 96x128": dict(
            model_overrides=recipe["model_overrides"], batch_size=8, input_size=96),
    }
    for name, setup in setups.items():
        values = dict(output_dir=tempfile.mkdtemp(), synthetic_videos=16, synthetic_frames=24, clips_per_video=4,
                      max_steps=args.steps, save_every=10**6, log_every=10**6, **setup)
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(values)], capture_output=True, text=True, check=True)
        stats = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:58s} {stats['steps_per_s']:6.2f} steps/s   peak RSS {stats['peak_rss_mb']:6.0f} MB")


if __name__ == "__main__":
    main()
