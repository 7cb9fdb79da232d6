"""Semi-online top-K tracking, streaming inference and caption aggregation."""

import pytest
import torch

from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
from captionformer_hf.modeling.tracking_captionformer import CaptionFormerTrackingSession

D = 16


def identities(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, D, generator=generator), dim=-1)


def clip(objects, present, scores=None, noise=0.05, num_queries=6, seed=0):
    """Queries of one clip: query i shows object present[i] (or background); returns (embeddings, scores)."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(num_queries, D, generator=generator)  # background queries
    query_scores = torch.full((num_queries,), 0.05)
    for q, obj in enumerate(present):
        embeddings[q] = objects[obj] + noise * torch.randn(D, generator=generator)
        query_scores[q] = 0.95 if scores is None else scores[q]
    return embeddings, query_scores


def session(**kwargs):
    defaults = dict(k_match=2, t_match=5, score_threshold=0.5, hysteresis_low=0.4, hysteresis_high=0.85, hysteresis_min_length=2)
    defaults.update(kwargs)
    return CaptionFormerTrackingSession(**defaults)


def run(sess, clips):
    """Feed clips; returns per clip {object: track_id}."""
    assignments = []
    for c, (objects, present, scores) in enumerate(clips):
        embeddings, query_scores = clip(objects, present, scores, seed=c)
        results = sess.update(embeddings, query_scores, payloads=[{"frames": [{"frame_index": c}]}] * 6)
        assignments.append({present[q]: track_id for q, track_id, _ in results if q < len(present)})
    return assignments


def test_crossing_objects_keep_their_ids():
    objects = identities(2)
    # the two objects swap query slots (as when they cross) in every other clip
    clips = [(objects, [0, 1] if c % 2 == 0 else [1, 0], None) for c in range(8)]
    assignments = run(session(), clips)
    assert all(a == assignments[0] for a in assignments)
    assert len(set(assignments[0].values())) == 2


def test_vanishing_object_returns_with_its_id_and_new_object_gets_a_new_id():
    objects = identities(3)
    clips = [(objects, [0, 1], None)] * 3 + [(objects, [0], None)] * 4 + [(objects, [0, 1, 2], None)] * 3
    sess = session()
    assignments = run(sess, clips)
    first = assignments[0]
    assert assignments[-1][0] == first[0] and assignments[-1][1] == first[1]  # object 1 came back with its id
    assert assignments[-1][2] not in first.values()  # object 2 is new
    tracks = sess.finalize()
    by_id = {t.track_id: t for t in tracks}
    assert [o.clip_index for o in by_id[first[1]].observations] == [0, 1, 2, 7, 8, 9]


def test_flickering_false_positive_is_removed_by_hysteresis():
    objects = identities(2)
    clips = []
    for c in range(10):
        present = [0] + ([1] if c in (2, 5, 8) else [])
        clips.append((objects, present, [0.95, 0.6]))  # object 1 flickers with a middling score
    sess = session()
    assignments = run(sess, clips)
    flicker_id = assignments[2][1]
    final_ids = {t.track_id for t in sess.finalize()}
    assert assignments[0][0] in final_ids
    assert flicker_id not in final_ids


def test_hysteresis_runs_by_hand():
    sess = session(hysteresis_low=0.4, hysteresis_high=0.8, hysteresis_min_length=3)
    scores = [0.5, 0.9, 0.5, 0.3, 0.6, 0.7, 0.6, 0.95, 0.5]
    assert sess.hysteresis_keep(scores, [1] * 9) == [True, True, True, False, True, True, True, True, True]
    # a high run that is too short is dropped; clip lengths count frames
    assert sess.hysteresis_keep([0.9, 0.3, 0.9], [1, 1, 1]) == [False, False, False]
    assert sess.hysteresis_keep([0.9, 0.3, 0.9], [3, 1, 1]) == [True, False, False]


def test_top_k_memory_outvotes_a_corrupted_recent_memory():
    """With K = 3 of 4 memory slots, one corrupted recent embedding does not steal the match."""
    objects = identities(2, seed=3)
    sess = session(k_match=3, t_match=4, match_cost_threshold=2.0)
    for c in range(3):
        e, s = clip(objects, [0, 1], seed=c)
        sess.update(e, s)
    # clip 3: track A is observed with an embedding close to object 1 (a mis-detection)
    corrupted = torch.stack([objects[1] + 0.3 * objects[0], objects[1]])
    e = torch.randn(6, D)
    e[:2] = corrupted
    s = torch.tensor([0.95, 0.95, 0.05, 0.05, 0.05, 0.05])
    sess.update(e, s)
    cost = sess.association_cost(torch.nn.functional.normalize(objects.clone(), dim=-1))
    # object 0 is still cheapest for track 0 and object 1 for track 1
    assert cost.argmin(1).tolist() == [0, 1]


def test_adjacent_matching_is_t_match_one():
    sess = session(k_match=1, t_match=1)
    objects = identities(2)
    run(sess, [(objects, [0, 1], None)] * 3)
    assert all(len(t.memory) == 1 for t in sess.tracks)


def test_caption_pool_is_bounded_and_uniform():
    sess = session(t_agg=4, hysteresis_min_length=1)
    objects = identities(1)
    wants = []
    for c in range(100):
        e, s = clip(objects, [0], seed=c)
        (result,) = sess.update(e, s)
        wants.append(result[2])
        if result[2]:
            sess.set_caption_query(result[1], torch.full((3, 2), float(c)))
    (track,) = sess.finalize()
    assert len(track.caption_pool) <= 8
    samples, scores = sess.caption_samples(track)
    assert samples.shape == (4, 3, 2) and scores.shape == (4,)
    clips = [int(x) for x in samples[:, 0, 0]]
    assert clips[0] == 0 and clips[-1] >= 64  # spread over the whole life of the track
    assert sum(wants) < 30  # most clips need no caption query at all


def test_memory_is_bounded_over_long_videos():
    objects = identities(3)
    sizes = []
    sess = session(t_match=10, t_agg=4)
    for c in range(2000):
        e, s = clip(objects, [0, 1, 2] if c % 50 else [0, 1], seed=c)
        for query, track_id, wants in sess.update(e, s):
            if wants:
                sess.set_caption_query(track_id, torch.zeros(5, 8))
        if c in (200, 1999):
            sizes.append(sess.memory_nbytes())
    assert len(sess.tracks) == 3
    bound = 3 * (10 * D * 4 + 2 * 4 * 5 * 8 * 4)  # per track: t_match embeddings + 2 * t_agg caption queries
    assert sizes[0] <= bound and sizes[1] <= bound


def test_session_validates_its_arguments():
    with pytest.raises(ValueError, match="`k_match`"):
        CaptionFormerTrackingSession(k_match=5, t_match=2)
    with pytest.raises(ValueError, match="`t_agg`"):
        CaptionFormerTrackingSession(t_agg=0)
    with pytest.raises(ValueError, match="`embeddings`"):
        CaptionFormerTrackingSession().update(torch.zeros(3, 4), torch.zeros(2))


# ----------------------------------------------------------------------------------------- streaming with a model
def loose(tiny_config, **kwargs):
    return tiny_config(score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1, **kwargs)


def test_track_video_output_format(tiny_config):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(loose(tiny_config, clip_length=3)).eval()
    video = torch.randn(7, 3, 64, 64)  # 3 clips, the last one padded
    result = model.track_video(video, max_new_tokens=3)
    assert (result["num_frames"], result["input_size"]) == (7, [64, 64])
    assert result["trajectories"]
    from pycocotools import mask as mask_utils

    frame_indices = set()
    for trajectory in result["trajectories"]:
        assert set(trajectory) >= {"track_id", "score", "category", "caption", "frames", "caption_ids"}
        for frame in trajectory["frames"]:
            assert 0 <= frame["frame_index"] < 7
            frame_indices.add(frame["frame_index"])
            mask = mask_utils.decode({"size": [64, 64], "counts": frame["mask_rle"].encode()})
            assert mask.shape == (64, 64) and mask.any()
            assert len(frame["box"]) == 4 and all(0 <= v <= 1 for v in frame["box"]) and frame["score"] == pytest.approx(frame["score"])
        assert len(trajectory["caption_ids"]) <= 3
    assert max(frame_indices) == 6  # the padded frames 7, 8 are not reported


def test_streaming_iterator_equals_tensor_and_batching(tiny_config):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(loose(tiny_config, clip_length=2)).eval()
    video = torch.randn(6, 3, 64, 64)
    whole = model.track_video(video, return_masks=False, caption=False)
    streamed = model.track_video((video[i : i + 2] for i in range(0, 6, 2)), return_masks=False, caption=False)
    batched = model.track_video(video, clip_batch_size=3, return_masks=False, caption=False)
    assert whole == streamed
    for a, b in zip(whole["trajectories"], batched["trajectories"]):
        assert a["track_id"] == b["track_id"] and len(a["frames"]) == len(b["frames"])
        for fa, fb in zip(a["frames"], b["frames"]):
            assert fa["box"] == pytest.approx(fb["box"], abs=0.05)


def test_single_frame_clips_track_online(tiny_config):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(loose(tiny_config, clip_length=1)).eval()
    # the same frame repeated: every query is the same object in every frame, so ids persist frame to frame
    video = torch.randn(1, 3, 64, 64).expand(5, -1, -1, -1)
    result = model.track_video(video, return_masks=False, caption=False)
    assert result["num_frames"] == 5
    for trajectory in result["trajectories"]:
        assert [f["frame_index"] for f in trajectory["frames"]] == list(range(5))


def test_track_video_bad_input(tiny_config):
    model = CaptionFormerForDenseVideoObjectCaptioning(tiny_config(clip_length=2)).eval()
    with pytest.raises(ValueError, match="no frames"):
        model.track_video(torch.zeros(0, 3, 64, 64))
    with pytest.raises(ValueError, match="one video"):
        model.track_video(torch.zeros(2, 4, 3, 64, 64))
    with pytest.raises(ValueError, match="more than config.clip_length"):
        model.track_video([torch.zeros(3, 3, 64, 64)])
    with pytest.raises(TypeError, match="iterable of clips"):
        model.track_video(42)


def test_long_video_streams_with_bounded_state(tiny_config):
    """2,000 frames of tiny input stream through; the tracker state stays bounded."""
    torch.manual_seed(0)
    config = tiny_config(clip_length=4, t_match=8, k_match=2, t_agg=4, score_threshold=0.3,
                         hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1,
                         segmenter_overrides={"num_queries": 3})
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    session = CaptionFormerTrackingSession.from_config(config)
    base = torch.randn(1, 3, 32, 32)
    sizes = []

    def clips():
        for c in range(500):
            if c in (100, 499):
                sizes.append(session.memory_nbytes())
            yield base.expand(4, -1, -1, -1) + 0.01 * torch.randn(4, 3, 32, 32)

    result = model.track_video(clips(), session=session, clip_batch_size=25, return_masks=False, max_new_tokens=2)
    assert result["num_frames"] == 2000
    assert sizes[1] <= max(sizes[0], 1) * 1.5
    assert all(len(t.memory) <= 8 and len(t.caption_pool) <= 8 for t in session.tracks)


def test_track_video_encodes_masks_at_the_requested_size(tiny_config):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(loose(tiny_config, clip_length=1)).eval()
    video = torch.randn(2, 3, 64, 96)
    full = model.track_video(video, caption=False)
    resized = model.track_video(video, caption=False, content_size=(64, 80), mask_size=(32, 40))
    assert resized["mask_size"] == [32, 40] and full["mask_size"] == [64, 96]
    from pycocotools import mask as mask_utils

    for a, b in zip(full["trajectories"], resized["trajectories"]):
        big = mask_utils.decode({"size": [64, 96], "counts": a["frames"][0]["mask_rle"].encode()})[:, :80]
        small = mask_utils.decode({"size": [32, 40], "counts": b["frames"][0]["mask_rle"].encode()})
        # the content region downsampled 2x: nearly the same mask
        assert (big[::2, ::2] != small).mean() < 0.1
