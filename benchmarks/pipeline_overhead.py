"""Pipeline overhead: `pipeline("dense-video-object-captioning")` on a video file vs the bare model on the same
clips (already decoded, resized and normalised), both producing tracked, captioned trajectories.

    python benchmarks/pipeline_overhead.py [--frames 64] [--size 256] [--repeats 3]

Overhead = decoding (PyAV), resizing/normalising and post-processing (boxes to the original video, labels, caption
text); both sides encode the masks at the original size. Model: the tiny test configuration with a wider backbone/decoder (random weights), CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import pipeline

    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
    from captionformer_hf.data.synthetic import SyntheticVideoConfig, generate_video, write_video
    from captionformer_hf.toy import toy_config, toy_processor

    torch.manual_seed(0)
    config = toy_config(
        clip_length=4, score_threshold=0.3, hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1,
        segmenter_overrides={"backbone_config": {"model_type": "resnet", "embedding_size": 32, "hidden_sizes": [32, 64, 128, 256],
                                                 "depths": [1, 1, 2, 1], "layer_type": "basic",
                                                 "out_features": ["stage1", "stage2", "stage3", "stage4"]},
                             "feature_size": 64, "mask_feature_size": 64, "hidden_dim": 64, "num_queries": 20},
    )
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    processor = toy_processor(clip_length=4, size=args.size)
    folder = tempfile.mkdtemp()
    video = generate_video(0, SyntheticVideoConfig(height=192, width=256, num_frames=args.frames, max_size=40, min_size=20))
    path = os.path.join(folder, "video.mp4")
    write_video(video["frames"], path, fps=8)
    pipe = pipeline("dense-video-object-captioning", model=model, processor=processor)

    video_processor = processor.video_processor
    reader = video_processor.open_video(path)
    batches = list(video_processor.iter_clip_batches(reader, clip_length=4))
    geometry = video_processor.geometry(reader)
    print(f"{args.frames} frames 192x256 -> input {tuple(batches[0].pixel_values_videos.shape[-2:])}, "
          f"{len(batches)} clips of 4")

    def bare():  # the same tracking, captioning and mask encoding on clips already decoded and normalised
        masks = {}
        return model.track_video(iter(batches), max_new_tokens=6, on_clip_batch=lambda o: masks.update(
            video_processor.post_process_clip_masks(o, geometry)))

    def full():
        return pipe(path, max_new_tokens=6)

    for fn in (bare, full):  # warm-up
        fn()
    timings = {}
    for name, fn in (("bare model (track_video on ready clips)", bare), ("pipeline (decode+preprocess+model+postprocess)", full)):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = best
        print(f"{name:52s} {best:7.3f} s")
    values = list(timings.values())
    print(f"pipeline overhead: {100 * (values[1] / values[0] - 1):.1f} % (goal <= 10 %)")


if __name__ == "__main__":
    main()
