"""Training throughput: optimizer steps per second, where each step's time goes, and peak memory.

    python benchmarks/training_throughput.py [--steps 60] [--workers 2] [--device cpu|cuda]

Runs the training loop (accelerate) on synthetic clips with the embedded default's recipe configuration (batch 8
clips of 2 frames, 96x128) and prints, per step: the time waiting for data, in the forward pass (without the
matcher), in the Hungarian matcher, in the backward pass and in the optimizer, each as a share of the step, then
steps/s and peak memory. Goals on CPU with 2 workers: data wait <= 10 % of the step, matcher <= 15 % of forward +
backward. The first 10 steps (start-up, worker spawn) are left out of the figures.
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
import torch
from captionformer_hf.training import TrainingConfig, train
values, warmup = json.loads(sys.argv[1]), int(sys.argv[2])
marks = {}
def mark(event, state):
    if event == "step_end" and state["step"] == warmup:
        marks["start"] = time.perf_counter()
result = train(TrainingConfig(**values), callbacks=[mark])
seconds = time.perf_counter() - marks["start"]
measured = result["profile"][warmup:]
phases = {name: sum(s.get(name, 0.0) for s in measured) / len(measured) for name in measured[0]}
print(json.dumps({"steps_per_s": len(measured) / seconds, "phases": phases,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
                  "steps": result["steps"]}))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "recipes", "default_synthetic.json")) as f:
        recipe = json.load(f)
    values = dict(output_dir=tempfile.mkdtemp(), synthetic_videos=40, synthetic_frames=24, clips_per_video=4,
                  model_overrides=recipe["model_overrides"], batch_size=8, input_size=96, max_steps=args.steps,
                  save_every=10**6, log_every=10**6, num_workers=args.workers, profile=True)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(values), str(args.warmup)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    phases = stats["phases"]
    phases["forward"] -= phases.get("matcher", 0.0)  # the matcher runs inside the forward pass (the loss)
    step_time = 1.0 / stats["steps_per_s"]
    import torch

    device = "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(f"default recipe config, batch 8 clips of 2 frames, 96x128, {args.workers} data workers, {device}; "
          f"steps {args.warmup + 1}-{stats['steps']}")
    print(f"{stats['steps_per_s']:.2f} steps/s ({step_time * 1000:.0f} ms a step); peak RSS {stats['peak_rss_mb']:.0f} MB"
          + (f", peak GPU {stats['peak_gpu_mb']:.0f} MB" if stats["peak_gpu_mb"] else ""))
    print("| phase | ms / step | share of the step |")
    print("| --- | --- | --- |")
    for name in ("data", "forward", "matcher", "backward", "optimizer"):
        value = phases.get(name, 0.0)
        print(f"| {name} | {value * 1000:.1f} | {100 * value / step_time:.1f} % |")
    compute = phases.get("forward", 0.0) + phases.get("backward", 0.0)
    print(f"data wait {100 * phases.get('data', 0.0) / step_time:.1f} % of the step (goal <= 10 %); matcher "
          f"{100 * phases.get('matcher', 0.0) / max(compute, 1e-9):.1f} % of forward + backward (goal <= 15 %)")


if __name__ == "__main__":
    main()
