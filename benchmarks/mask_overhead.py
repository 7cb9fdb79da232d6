"""What masks cost end to end: ``predict_video`` with masks vs without, captions off, in the worst case (threshold 0,
no hysteresis: all 100 queries of every clip tracked and their masks encoded at the original size).

    python benchmarks/mask_overhead.py                 # 8 frames of a 480x640 synthetic video, CPU
    python benchmarks/mask_overhead.py --frames 16 --device cuda

Random weights of the ``small`` config of ``inference_speed.py`` (100 queries). Prints, for clip batches of 1 and of
8 clips, the time with masks, without, and the overhead in percent (goal: at most 15 %), with the masks encoded as
``predict_video`` does (``processor.post_process_clip_masks``: on an accelerator in a worker thread while the next
batch runs, on the CPU in the loop) and, for comparison, always in the loop's own thread. Then the mask encoder
alone (``ClipMaskEncoder``: resize, threshold, RLE) on 800 masks of 120x160 logits to 480x640, 8 calls of 100, with
its default chunks and with the former 256 MiB ones: the part of the overhead that does not move with the model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from inference_speed import synchronize  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from inference_speed import small_config

    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning, CaptionFormerProcessor, predict_video
    from captionformer_hf.data.synthetic import SyntheticVideoConfig, generate_video, write_video
    from captionformer_hf.processing import CaptionFormerVideoProcessor
    from captionformer_hf.toy import toy_tokenizer

    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(small_config(clip_length=1)).to(args.device).eval()
    processor = CaptionFormerProcessor(CaptionFormerVideoProcessor(), toy_tokenizer())
    vp = processor.video_processor
    path = os.path.join(tempfile.mkdtemp(), "video.mp4")
    video = generate_video(0, SyntheticVideoConfig(height=480, width=640, num_frames=args.frames, min_size=60,
                                                   max_size=160))
    write_video(video["frames"], path, fps=8)
    worst = {"threshold": 0.0, "caption": False,
             "tracker_overrides": {"hysteresis_low": 0.0, "hysteresis_high": 0.0, "hysteresis_min_length": 1}}

    def in_the_loop(batch_size):  # the same work, the masks encoded in the loop's thread
        frames = vp.open_video(path)
        geometry = vp.geometry(frames)
        session = model.init_video_session(threshold=0.0, caption=False, **worst["tracker_overrides"])
        masks = {}
        batches = vp.iter_clip_batches(frames, 1, batch_size, device=args.device, dtype=model.dtype)
        out = model.track_video(batches, session=session, caption=False,
                                on_clip_batch=lambda o: masks.update(vp.post_process_clip_masks(o, geometry)))
        return processor.post_process_dense_captions(out, geometry.original_size, geometry.content_size,
                                                     mask_rles=masks)

    def timed(fn):
        synchronize(args.device)
        start = time.perf_counter()
        result = fn()
        synchronize(args.device)
        return time.perf_counter() - start, result

    print(f"{args.frames} frames 480x640, 100 queries tracked, captions off, {args.device}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} rounds, the three runs interleaved in each "
          "(this VM's speed drifts by more than the overhead between blocks of runs)")
    print("| clips a batch | no masks | masks (predict_video) | overhead | masks (in the loop) | overhead |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for batch_size in (1, 8):
            common = dict(worst, clip_batch_size=batch_size)
            predict_video(model, processor, path, **common)  # warm-up
            runs = {"boxes": [], "masks": [], "loop": []}
            for _ in range(args.repeats):
                runs["boxes"].append(timed(lambda: predict_video(model, processor, path, return_masks=False,
                                                                 **common))[0])
                elapsed, result = timed(lambda: predict_video(model, processor, path, **common))
                runs["masks"].append(elapsed)
                runs["loop"].append(timed(lambda: in_the_loop(batch_size))[0])
            t_boxes, t_masks, t_loop = (sorted(times)[len(times) // 2] for times in runs.values())
            entries = sum(len(t["frames"]) for t in result["trajectories"])
            print(f"| {batch_size} | {t_boxes:.2f} s | {t_masks:.2f} s | {100 * (t_masks / t_boxes - 1):+.0f} % | "
                  f"{t_loop:.2f} s | {100 * (t_loop / t_boxes - 1):+.0f} % |  ({entries} masks)")
    encoder_alone(args)


def encoder_alone(args):
    from captionformer_hf.processing import VideoGeometry
    from captionformer_hf.processing.video_processing_captionformer import ClipMaskEncoder

    geometry = VideoGeometry(original_size=(480, 640), content_size=(480, 640), padded_size=(480, 640))
    blobs = torch.randn(800, 1, 15, 20, generator=torch.Generator().manual_seed(0))
    logits = 5 * torch.nn.functional.interpolate(blobs, size=(120, 160), mode="bilinear")[:, 0].to(args.device)
    for name, budget in (("default chunks", None), ("256 MiB chunks", 1 << 28)):
        encoder = ClipMaskEncoder(geometry, max_chunk_bytes=budget)
        times = []
        for _ in range(max(args.repeats, 5)):
            synchronize(args.device)
            start = time.perf_counter()
            for first in range(0, 800, 100):
                encoder(logits[first : first + 100])
            synchronize(args.device)
            times.append(time.perf_counter() - start)
        times.sort()
        print(f"mask encoder alone, {name}: 800 masks in {times[0]:.2f} s (median {times[len(times) // 2]:.2f} s)")


if __name__ == "__main__":
    main()
