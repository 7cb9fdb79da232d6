"""CHOTA memory on large inputs: peak memory of compute_chota grows with the detections and their overlaps, not
with frames x GT tracks x predicted tracks.

    python benchmarks/chota_memory.py

Two cases, each in a fresh process: 1,000 tracks over 20 frames (crowded frames: 1,000 detections a frame is the
limit compute_chota accepts) and 100 tracks over 10,000 frames
(long video); predictions are the GT boxes shifted by a few pixels with 10 % of the tracks split in two. Prints the
peak resident memory of the process, split into the imports (the package imports torch), the input lists (Python
dicts, the caller's) and what CHOTA itself adds; and the time. Goal: under 2 GB each.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from captionformer_hf.metrics import compute_chota

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

imports = rss_mb()
num_tracks, num_frames = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
width = max(2000, int(np.sqrt(num_tracks)) * 60)
refs, preds = [], []
gt_tracks, pred_tracks = [], []
for t in range(num_tracks):
    x, y = rng.uniform(0, width, 2)
    w, h = rng.uniform(20, 60, 2)
    vx, vy = rng.uniform(-1, 1, 2)
    boxes = [[float(x + vx * f), float(y + vy * f), float(w), float(h)] for f in range(num_frames)]
    gt_tracks.append({"track_id": t, "caption": "a red square", "frames": [
        {"frame_index": f, "box": b} for f, b in enumerate(boxes)]})
    split = num_frames // 2 if t % 10 == 0 else num_frames
    for piece, pid in ((range(0, split), 2 * t), (range(split, num_frames), 2 * t + 1)):
        if len(piece):
            pred_tracks.append({"track_id": pid, "score": 0.9, "caption": "a red square", "frames": [
                {"frame_index": f, "box": [boxes[f][0] + 2, boxes[f][1] - 1, boxes[f][2], boxes[f][3]]} for f in piece]})
refs = [{"video_id": "v", "num_frames": num_frames, "trajectories": gt_tracks}]
preds = [{"video_id": "v", "num_frames": num_frames, "trajectories": pred_tracks}]
before = rss_mb()
start = time.perf_counter()
result = compute_chota(preds, refs, caption_metrics=("cider",))
print(json.dumps({"seconds": time.perf_counter() - start, "imports_mb": imports, "input_mb": before - imports,
                  "peak_mb": rss_mb(),
                  "DetA": result["DetA"], "AssA": result["AssA"]}))
"""


def main():
    print("| case | detections per side | peak RSS | imports (torch...) | input lists | CHOTA's own | time | DetA | AssA |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for tracks, frames in ((1000, 20), (100, 10000)):
        out = subprocess.run([sys.executable, "-c", CHILD, str(tracks), str(frames)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        own = r["peak_mb"] - r["imports_mb"] - r["input_mb"]
        print(f"| {tracks:,} tracks x {frames:,} frames | {tracks * frames:,} | {r['peak_mb']:.0f} MB | "
              f"{r['imports_mb']:.0f} MB | {r['input_mb']:.0f} MB | {own:.0f} MB | {r['seconds']:.1f} s | "
              f"{r['DetA']:.3f} | {r['AssA']:.3f} |")


if __name__ == "__main__":
    main()
