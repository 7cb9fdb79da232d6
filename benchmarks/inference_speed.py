"""Video inference speed: how much of the model's speed reaches the user end to end.

    python benchmarks/inference_speed.py                      # GPU: release size, bf16; CPU: the small config, fp32
    python benchmarks/inference_speed.py --size release --device cuda --dtype bfloat16
    python benchmarks/inference_speed.py --size small --device cpu --frames 16

Random weights. Worst case: threshold 0 and no hysteresis, so all 100 queries of every clip are kept, tracked,
mask-encoded at the original size and captioned (100 trajectories). Prints, for a synthetic 480x640 video of
``--frames`` frames (clips of T = 1, ``--clip-batch-size`` clips a forward pass):

- decode + preprocess frames/s (PyAV in a background thread, resize and normalise on the device),
- segmenter-only frames/s (the clip forward on clips already on the device),
- end-to-end frames/s with masks and without (``predict_video``: decode, segment, track, RLE, captions),
- the ratio end-to-end / segmenter-only (goal >= 0.6),

then the same end to end on a real 1080p mp4 (gradio's sample ``a.mp4``, 209 frames, input 480x800) at the default
threshold and in the worst case.

Sizes: ``release`` is the paper's architecture (Swin-B, 100 queries, 10 decoder layers, EVA ViT-g at 364 px,
32-token Q-Former, OPT-2.7B shape); ``small`` keeps 100 queries and the same pipeline with narrow, shallow parts so
that a CPU finishes in minutes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def release_config(**overrides):
    from captionformer_hf import CaptionFormerConfig

    return CaptionFormerConfig(**overrides)


def small_config(**overrides):
    from captionformer_hf import CaptionFormerConfig

    segmenter = {
        "backbone_config": {"model_type": "swin", "embed_dim": 48, "depths": [1, 1, 2, 1], "num_heads": [2, 4, 4, 8],
                            "window_size": 7, "out_features": ["stage1", "stage2", "stage3", "stage4"]},
        "feature_size": 128, "mask_feature_size": 128, "hidden_dim": 128, "encoder_layers": 2,
        "encoder_feedforward_dim": 256, "decoder_layers": 4, "dim_feedforward": 512, "num_attention_heads": 4,
        "num_queries": 100,
    }
    vision = {"hidden_size": 192, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 3,
              "image_size": 224, "patch_size": 16}
    qformer = {"hidden_size": 192, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 384,
               "cross_attention_frequency": 1}
    text = {"model_type": "opt", "vocab_size": 50272, "hidden_size": 256, "num_hidden_layers": 2, "ffn_dim": 512,
            "num_attention_heads": 4, "word_embed_proj_dim": 256, "pad_token_id": 1, "bos_token_id": 2,
            "eos_token_id": 2}
    return CaptionFormerConfig(segmenter_config=segmenter, vision_config=vision, qformer_config=qformer,
                               text_config=text, num_query_tokens=32, **overrides)


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats=1):
    best = float("inf")
    result = None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=("release", "small"), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--clip-batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--real-frames", type=int, default=None, help="frames of the real video (default: all on GPU, 32 on CPU)")
    parser.add_argument("--real-video", default=None, help="the real video (default: gradio's media_assets/videos/a.mp4)")
    args = parser.parse_args()
    gpu = torch.device(args.device).type == "cuda"
    size = args.size or ("release" if gpu else "small")
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    frames_count = args.frames or (32 if gpu else 16)

    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning, CaptionFormerProcessor, predict_video
    from captionformer_hf.data.synthetic import SyntheticVideoConfig, generate_video, write_video
    from captionformer_hf.processing import CaptionFormerVideoProcessor
    from captionformer_hf.toy import toy_tokenizer

    torch.manual_seed(0)
    config = (release_config if size == "release" else small_config)(clip_length=1)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).to(args.device, dtype).eval()
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    processor = CaptionFormerProcessor(CaptionFormerVideoProcessor(), toy_tokenizer())
    video_processor = processor.video_processor
    worst = {"threshold": 0.0, "tracker_overrides": {"hysteresis_low": 0.0, "hysteresis_high": 0.0,
                                                    "hysteresis_min_length": 1}}
    common = {"clip_batch_size": args.clip_batch_size, "max_new_tokens": args.max_new_tokens}
    print(f"{size} config ({parameters:.0f} M parameters), {args.device}, {dtype}, clips of 1, "
          f"{args.clip_batch_size} clips a forward pass")

    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "video.mp4")
    video = generate_video(0, SyntheticVideoConfig(height=480, width=640, num_frames=frames_count, min_size=60, max_size=160))
    write_video(video["frames"], path, fps=8)

    def decode():
        reader = video_processor.open_video(path)
        return list(video_processor.iter_clip_batches(reader, 1, args.clip_batch_size, args.device, dtype))

    with torch.no_grad():
        decode()  # warm-up
        t_decode, batches = timed(decode, args.device, repeats=2)

        def segment():
            return [model.model(b.pixel_values_videos).scores for b in batches]

        segment()
        t_segment, _ = timed(segment, args.device, repeats=2)

        predict_video(model, processor, path, **worst, **common)  # warm-up (allocator, kernels)
        t_masks, result = timed(lambda: predict_video(model, processor, path, **worst, **common), args.device)
        t_boxes, _ = timed(lambda: predict_video(model, processor, path, return_masks=False, **worst, **common), args.device)

    tracks = len(result["trajectories"])
    fps = {name: frames_count / t for name, t in
           (("decode", t_decode), ("segment", t_segment), ("masks", t_masks), ("boxes", t_boxes))}
    print(f"synthetic 480x640 video, {frames_count} frames -> input {tuple(batches[0].pixel_values_videos.shape[-2:])}, "
          f"{tracks} trajectories")
    print(f"| decode + preprocess | {fps['decode']:7.1f} frames/s |")
    print(f"| segmenter only      | {fps['segment']:7.1f} frames/s |")
    print(f"| end to end, masks   | {fps['masks']:7.1f} frames/s |")
    print(f"| end to end, boxes   | {fps['boxes']:7.1f} frames/s |")
    print(f"ratio end-to-end (masks) / segmenter-only: {fps['masks'] / fps['segment']:.2f} (goal >= 0.6); "
          f"without masks: {fps['boxes'] / fps['segment']:.2f}")

    real = args.real_video
    if real is None:
        try:
            import gradio

            real = os.path.join(os.path.dirname(gradio.__file__), "media_assets", "videos", "a.mp4")
        except ImportError:
            pass
    if real is None or not os.path.exists(real):
        print("real video: gradio's a.mp4 is not installed (pip install gradio), skipped")
        return
    real_frames = args.real_frames or (None if gpu else 32)
    limit = {"max_frames": real_frames} if real_frames else {}
    with torch.no_grad():
        for name, options in (("threshold 0.5", {}), ("worst case", worst)):
            seconds, out = timed(lambda: predict_video(model, processor, real, **options, **limit, **common), args.device)
            count = real_frames or out["num_frames"]
            print(f"real 1080p mp4 (a.mp4, {count} frames, input 480x800), {name}: {count / seconds:.1f} frames/s, "
                  f"{len(out['trajectories'])} trajectories")


if __name__ == "__main__":
    main()
