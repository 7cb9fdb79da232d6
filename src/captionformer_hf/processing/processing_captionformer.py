"""CaptionFormer processor: the video processor and the LM tokenizer (captions in, captions out).

Remote-code safe: single-dot imports only.
"""

from __future__ import annotations

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .trajectory_captionformer import VideoTrajectories


class CaptionFormerProcessor(ProcessorMixin):
    r"""
    Wraps a [`CaptionFormerVideoProcessor`] and a tokenizer.

    - ``processor(videos=..., text=...)``: video tensors (see the video processor) and/or caption token ids
      (``caption_ids``, ``caption_attention_mask``): each caption is followed by ``caption_end_token`` (the
      tokenizer's EOS by default; the released OPT model ends captions with ``"\n"``), the LM's training target.
    - :meth:`post_process_dense_captions`: a video output (``model.finalize_video_session`` / ``track_video``) ->
      trajectories on the original video with caption text (``docs/format.md``).

    Args:
        video_processor ([`CaptionFormerVideoProcessor`]): the video processor.
        tokenizer ([`PreTrainedTokenizerBase`]): the LM's tokenizer.
        caption_end_token (`str`, *optional*): token that ends a caption (default: the tokenizer's EOS token; the
            released OPT models end captions with the newline token, OPT's ``"Ċ"``, which their conversion sets).
        max_caption_length (`int`, *optional*, defaults to 32): caption length (tokens, end token included).
    """

    def __init__(self, video_processor=None, tokenizer=None, caption_end_token=None, max_caption_length=32, **kwargs):
        self.caption_end_token = caption_end_token
        self.max_caption_length = max_caption_length
        super().__init__(video_processor, tokenizer, **kwargs)

    @property
    def end_token(self) -> str:
        token = self.caption_end_token or self.tokenizer.eos_token
        if token is None:
            raise ValueError("the tokenizer has no EOS token: set `caption_end_token` on the processor")
        return token

    @property
    def end_token_id(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(self.end_token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"`caption_end_token` {self.end_token!r} is not a token of the tokenizer")
        return int(token_id)

    def tokenize_captions(self, captions: list[str], max_length: int | None = None) -> dict:
        """Caption token ids ``(N, L)`` ending with the end token, and their attention mask; an empty caption gives
        an all-zero mask row (no caption loss for that object)."""
        if isinstance(captions, str):
            captions = [captions]
        max_length = max_length or self.max_caption_length
        end_id = self.end_token_id
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else end_id
        rows = []
        for caption in captions:
            if not isinstance(caption, str):
                raise TypeError(f"captions must be strings, got {type(caption).__name__}")
            ids = self.tokenizer(caption.strip(), add_special_tokens=False)["input_ids"] if caption.strip() else []
            rows.append(ids[: max_length - 1] + [end_id] if ids else [])
        length = max([len(r) for r in rows] + [1])
        caption_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            caption_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return {"caption_ids": caption_ids, "caption_attention_mask": mask}

    def __call__(self, videos=None, text=None, **kwargs) -> BatchFeature:
        if videos is None and text is None:
            raise ValueError("give `videos`, `text` (captions) or both")
        data = {}
        if videos is not None:
            data.update(self.video_processor(videos, **kwargs))
        if text is not None:
            data.update(self.tokenize_captions(text))
        return BatchFeature(data=data)

    def decode_caption(self, token_ids) -> str:
        """Caption text of generated ids: cut at the first end token (``caption_end_token``: the tokenizer's EOS by
        default; a converted official checkpoint's is the newline, and an EOS before it is dropped as a special token,
        as the release decodes), special tokens dropped, whitespace collapsed."""
        ids = [int(t) for t in token_ids]
        end = next((i for i, t in enumerate(ids) if t == self.end_token_id), len(ids))
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        return " ".join(text.split())

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return [self.decode_caption(s) for s in sequences]

    def post_process_clip_masks(self, outputs, geometry, max_chunk_bytes: int | None = None) -> dict:
        """One clip batch's masks as RLE strings at the original size, ``{(track_id, frame_index): rle}``
        (``CaptionFormerVideoProcessor.post_process_clip_masks``)."""
        return self.video_processor.post_process_clip_masks(outputs, geometry, max_chunk_bytes=max_chunk_bytes)

    def post_process_dense_captions(
        self,
        outputs,
        original_size,
        content_size=None,
        id2label: dict | None = None,
        mask_rles: dict | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        video_id=None,
    ) -> VideoTrajectories:
        """A :class:`CaptionFormerVideoOutput` -> a video of the trajectory format (``docs/format.md``: geometry,
        masks and labels by the video processor; ``num_frames``, ``fps`` and ``video_id`` as given, see
        ``CaptionFormerVideoProcessor.post_process_dense_captions``) with the captions' text (several captions per
        trajectory, ``frame_caption_indices``: each per-frame entry's ``caption`` too)."""
        result = self.video_processor.post_process_dense_captions(
            outputs, original_size, content_size=content_size, id2label=id2label, mask_rles=mask_rles,
            num_frames=num_frames, fps=fps, video_id=video_id,
        )
        if outputs.caption_ids is not None:
            captioned = outputs.captioned if outputs.captioned is not None else [True] * len(outputs.caption_ids)
            for trajectory, ids, ok in zip(result["trajectories"], outputs.caption_ids, captioned):
                trajectory["caption"] = self.decode_caption(ids) if ok else ""
        indices = getattr(outputs, "frame_caption_indices", None)
        if indices is not None and outputs.part_caption_ids is not None:
            # several captions per trajectory: each per-frame entry gets its part's caption ("": none); the entries
            # were appended to their trajectories in the output's order
            texts = [self.decode_caption(ids) for ids in outputs.part_caption_ids]
            seen = [0] * len(result["trajectories"])
            for track, row in zip(outputs.frame_track_indices.tolist(), indices.tolist()):
                result["trajectories"][track]["frames"][seen[track]]["caption"] = texts[row] if row >= 0 else ""
                seen[track] += 1
        return result


__all__ = ["CaptionFormerProcessor"]
