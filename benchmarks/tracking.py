"""Tracker speed and streaming memory.

    python benchmarks/tracking.py

1. Tracker time per clip with 100 live tracks (top-K association, K_match = 7, T_match = 100, D = 256).
2. Peak resident memory of `track_video` (tiny random model, 64x64 frames, clips of 5, frames decoded lazily from
   a generator) for a 100-frame and a 1,000-frame video, each in a fresh process; goal: ratio <= 1.2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, torch
from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
from captionformer_hf.toy import toy_config
torch.manual_seed(0)
frames = int(sys.argv[1])
config = toy_config(clip_length=5, score_threshold=0.3, hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1)
model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
base = torch.randn(1, 3, 64, 64)
def clips():
    for c in range(frames // 5):
        yield base.expand(5, -1, -1, -1) + 0.05 * torch.randn(5, 3, 64, 64)
from captionformer_hf.processing import CaptionFormerVideoProcessor, VideoGeometry
geometry, processor, masks = VideoGeometry((64, 64), (64, 64), (64, 64)), CaptionFormerVideoProcessor(), {}
result = model.track_video(clips(), max_new_tokens=4,
                           on_clip_batch=lambda o: masks.update(processor.post_process_clip_masks(o, geometry)))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tracks": len(result.track_ids), "frames": result.num_frames}))
"""


def tracker_speed(num_tracks=100, dim=256, clips=50):
    import torch

    from captionformer_hf.modeling.tracking_captionformer import CaptionFormerTrackingSession

    torch.manual_seed(0)
    identities = torch.nn.functional.normalize(torch.randn(num_tracks, dim), dim=-1)
    session = CaptionFormerTrackingSession(k_match=7, t_match=100, score_threshold=0.5, hysteresis_min_length=1)
    scores = torch.full((num_tracks,), 0.9)
    times = []
    for c in range(clips + 100):  # fill the memory banks first (100 clips), then time
        queries = identities[torch.randperm(num_tracks)] + 0.05 * torch.randn(num_tracks, dim)
        start = time.perf_counter()
        session.update(queries, scores)
        if c >= 100:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times), len(session.tracks)


def main():
    per_clip, tracks = tracker_speed()
    print(f"tracker: {per_clip * 1000:.1f} ms per clip with {tracks} live tracks (K_match 7, T_match 100, D 256)")
    peaks = {}
    for frames in (100, 1000):
        out = subprocess.run([sys.executable, "-c", CHILD, str(frames)], capture_output=True, text=True, check=True)
        stats = json.loads(out.stdout.strip().splitlines()[-1])
        peaks[frames] = stats["peak_rss_mb"]
        print(f"track_video {frames:5d} frames: peak RSS {stats['peak_rss_mb']:.0f} MB, {stats['tracks']} tracks")
    print(f"peak memory ratio 1000 / 100 frames: {peaks[1000] / peaks[100]:.3f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
