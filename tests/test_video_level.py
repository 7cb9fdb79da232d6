"""The video-level interface: a new inference mode is one class and one registry line, and the public video API
(``predict_video``) runs it."""

import numpy as np
import pytest
import torch


@pytest.fixture
def every_slot_mode():
    """Registers a toy mode, ``"every-slot"``: every query slot is a track of its own, on every frame; captioned
    from its last clip with the shared caption pieces. Unregistered afterwards."""
    from captionformer_hf.modeling import configuration_captionformer, video_level_captionformer as video_level
    from captionformer_hf.modeling.captioning_captionformer import mask_logits_on_grid

    class EverySlot(video_level.CaptionFormerVideoLevel):
        name = "every-slot"
        pads_short_clips = True

        def __init__(self, tracker, config):
            super().__init__(tracker, config)
            self.frames, self.boxes, self.last = [], [], None

        @classmethod
        def from_config(cls, config, threshold=None, **overrides):
            return cls(None, config)

        def step(self, model, session, clips, outputs, frame_indices):
            head = model.model.caption_head
            for b, indices in enumerate(frame_indices):
                for t, index in enumerate(indices):
                    self.frames.append(int(index))
                    self.boxes.append(outputs.pred_boxes[b, :, t].float().cpu())
                self.last = {"frame": head.prepare_frames(clips[b, :1])[0], "queries": outputs.object_queries[b],
                             "grids": mask_logits_on_grid(outputs.masks_logits[b, :, 0], head.grid_size)}
            batch_size, num_queries = outputs.scores.shape
            return torch.arange(num_queries).repeat(batch_size, 1)

        def finalize(self, model, session, caption, aggregation, batch_size, generate_kwargs):
            num_queries = self.boxes[0].shape[0]
            boxes = torch.stack(self.boxes, 1)  # (Q, frames, 4)
            caption_ids = captioned = None
            if caption:
                queries = video_level.caption_head_outputs(
                    model.model.caption_head, [self.last["frame"]], torch.zeros(num_queries, dtype=torch.long),
                    self.last["queries"], self.last["grids"], None, batch_size)
                captioned = torch.ones(num_queries, dtype=torch.bool)
                caption_ids = video_level.generate_track_captions(model, queries, captioned, **generate_kwargs)
            return video_level.CaptionFormerVideoOutput(
                video_inference_mode=self.name,
                track_ids=torch.arange(num_queries) + 100,
                scores=torch.ones(num_queries),
                category_ids=torch.zeros(num_queries, dtype=torch.long),
                caption_ids=caption_ids,
                captioned=captioned,
                frame_track_indices=torch.arange(num_queries).repeat_interleave(len(self.frames)),
                frame_indices=torch.tensor(self.frames).repeat(num_queries),
                frame_boxes=boxes.reshape(-1, 4),
                frame_scores=torch.ones(num_queries * len(self.frames)),
                num_frames=session.num_frames,
                input_size=session.input_size,
            )

    video_level.register_video_inference_mode("every-slot", EverySlot)
    yield EverySlot
    del video_level.VIDEO_LEVEL_ALGORITHMS["every-slot"]
    configuration_captionformer._VIDEO_INFERENCE_MODES.remove("every-slot")


def test_a_registered_mode_runs_through_predict_video(every_slot_mode, toy_config):
    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning, predict_video
    from captionformer_hf.toy import toy_processor

    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(toy_config(clip_length=2, video_inference_mode="every-slot"))
    model.eval()
    processor = toy_processor(clip_length=2)
    video = np.random.default_rng(0).integers(0, 255, (5, 48, 64, 3), dtype=np.uint8)  # clips of 2, 2, 1 frames
    session_modes = []
    original = model.init_video_session

    def spy(*args, **kwargs):
        session = original(*args, **kwargs)
        session_modes.append(type(session.video_level))
        return session

    model.init_video_session = spy
    result = predict_video(model, processor, video, video_id="v", max_new_tokens=3, return_masks=False)
    assert session_modes == [every_slot_mode]
    num_queries = model.config.segmenter_config.num_queries
    trajectories = result["trajectories"]
    assert [t["track_id"] for t in trajectories] == [100 + q for q in range(num_queries)]
    for trajectory in trajectories:
        assert [f["frame_index"] for f in trajectory["frames"]] == [0, 1, 2, 3, 4]  # the padded frame not reported
        for f in trajectory["frames"]:
            x, y, w, h = f["box"]
            assert 0 <= x <= x + w <= 64 and 0 <= y <= y + h <= 48  # boxes in the source video's pixels
        assert isinstance(trajectory["caption"], str)
    assert result["video_id"] == "v" and result["num_frames"] == 5


def test_registry_refuses_what_it_cannot_run(every_slot_mode, toy_config):
    from captionformer_hf import CaptionFormerConfig, register_video_inference_mode
    from captionformer_hf.modeling.video_level_captionformer import video_level_from_config

    with pytest.raises(TypeError, match="`algorithm` must be a CaptionFormerVideoLevel subclass"):
        register_video_inference_mode("mine", object)
    with pytest.raises(ValueError, match="'every-slot' is already registered"):
        register_video_inference_mode("every-slot", type("Other", (every_slot_mode,), {}))
    with pytest.raises(ValueError, match="`video_inference_mode` must be one of .*'every-slot'.* got 'unknown'"):
        CaptionFormerConfig(video_inference_mode="unknown")
    config = toy_config(video_inference_mode="every-slot")
    config.video_inference_mode = "gone"  # e.g. a config saved where a mode was registered
    with pytest.raises(ValueError, match="'gone' has no registered algorithm"):
        video_level_from_config(config)
