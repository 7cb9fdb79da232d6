"""Semi-online top-K tracking, streaming inference and caption aggregation."""

import pytest
import torch
from pycocotools import mask as mask_utils

from captionformer_hf import (
    CaptionFormerForDenseVideoObjectCaptioning,
    CaptionFormerTrackingOutput,
    CaptionFormerTrackingSession,
    CaptionFormerVideoOutput,
)
from captionformer_hf.processing import CaptionFormerVideoProcessor, VideoGeometry

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
            sess.set_caption_inputs(result[1], {"clip": torch.tensor(float(c))})
    (track,) = sess.finalize()
    assert len(track.caption_pool) <= 8
    samples = sess.caption_samples(track)
    clips = [int(o.caption_inputs["clip"]) for o in samples]
    assert len(samples) == 4 and clips == sorted(clips)
    assert clips[0] == 0 and clips[-1] >= 64  # spread over the whole life of the track
    assert sum(wants) < 30  # most clips need no caption inputs at all
    # observations thinned out of the pool released their inputs
    dropped = [o for o in track.observations if o not in track.caption_pool]
    assert dropped and all(o.caption_inputs is None for o in dropped)


def test_memory_is_bounded_over_long_videos():
    objects = identities(3)
    sizes = []
    sess = session(t_match=10, t_agg=4)
    frame = torch.zeros(3, 8, 8)  # shared by the observations of one clip
    for c in range(2000):
        e, s = clip(objects, [0, 1, 2] if c % 50 else [0, 1], seed=c)
        frame = torch.zeros(3, 8, 8)
        for query, track_id, wants in sess.update(e, s):
            if wants:
                sess.set_caption_inputs(track_id, {"frame": frame, "query": torch.zeros(5)})
        if c in (200, 1999):
            sizes.append(sess.memory_nbytes())
    assert len(sess.tracks) == 3
    # per track: t_match embeddings + 2 * t_agg caption inputs (a frame and a query each, at most)
    bound = 3 * (10 * D * 4 + 2 * 4 * (3 * 8 * 8 + 5) * 4)
    assert sizes[0] <= bound and sizes[1] <= bound


def test_memory_bank_equals_a_deque_per_track():
    """The ring-buffer bank gives every track its last t_match embeddings, oldest first."""
    from collections import deque

    sess = session(t_match=3, k_match=1, match_cost_threshold=2.0)
    objects = identities(2)
    expected = {}
    for c in range(7):
        e, s = clip(objects, [0, 1], seed=c)
        for q, track_id, _ in sess.update(e, s):
            expected.setdefault(track_id, deque(maxlen=3)).append(torch.nn.functional.normalize(e[q], dim=-1))
    for track in sess.tracks:
        assert len(track.memory) == 3
        for got, want in zip(track.memory, expected[track.track_id]):
            torch.testing.assert_close(got, want)


def test_session_validates_its_arguments():
    with pytest.raises(ValueError, match="`k_match`"):
        CaptionFormerTrackingSession(k_match=5, t_match=2)
    with pytest.raises(ValueError, match="`t_agg` must be a positive integer, got 0"):
        CaptionFormerTrackingSession(t_agg=0)
    from captionformer_hf.modeling.release_tracking_captionformer import CaptionFormerReleaseTracker

    with pytest.raises(ValueError, match="`max_trajectories` must be a positive integer, got True"):
        CaptionFormerReleaseTracker(max_trajectories=True)
    with pytest.raises(ValueError, match="`embeddings`"):
        CaptionFormerTrackingSession().update(torch.zeros(3, 4), torch.zeros(2))


# ----------------------------------------------------------------------------------------- streaming with a model
def loose(toy_config, **kwargs):
    return toy_config(score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1, **kwargs)


def track_with_masks(model, video, height, width, content=None, original=None, **kwargs):
    """``track_video`` with the processor encoding each batch's masks; returns the output and the mask of each of
    its per-frame entries (joined by (track id, frame) as ``post_process_dense_captions`` does)."""
    content = content or (height, width)
    geometry = VideoGeometry(tuple(original or content), tuple(content), (height, width))
    processor = CaptionFormerVideoProcessor()
    rles = {}
    out = model.track_video(video, on_clip_batch=lambda o: rles.update(processor.post_process_clip_masks(o, geometry)),
                            **kwargs)
    listed = [rles[(int(out.track_ids[t]), int(f))] for t, f in zip(out.frame_track_indices, out.frame_indices)]
    return out, listed, rles


def test_track_video_output(toy_config):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(loose(toy_config, clip_length=3)).eval()
    video = torch.randn(7, 3, 64, 64)  # 3 clips, the last one padded
    out, rles, encoded = track_with_masks(model, video, 64, 64, max_new_tokens=3)
    assert isinstance(out, CaptionFormerVideoOutput)
    assert (out.num_frames, out.input_size) == (7, (64, 64))
    num_tracks, num_entries = len(out.track_ids), len(out.frame_indices)
    assert num_tracks > 0 and num_entries > 0
    assert out.scores.shape == out.category_ids.shape == out.captioned.shape == (num_tracks,)
    assert out.frame_boxes.shape == (num_entries, 4) and out.frame_scores.shape == (num_entries,)
    assert out.frame_track_indices.shape == (num_entries,)
    assert out.caption_ids.shape[0] == num_tracks and out.caption_ids.shape[1] <= 3 and bool(out.captioned.all())
    assert bool((out.frame_boxes >= 0).all() and (out.frame_boxes <= 1).all())
    assert 0 <= int(out.frame_indices.min()) and int(out.frame_indices.max()) == 6  # padded frames 7, 8 not reported
    assert bool((out.frame_track_indices.diff() >= 0).all())  # sorted by trajectory
    for rle in rles:  # every listed entry has its mask, none empty (entries are the frames where it is visible)
        assert mask_utils.decode({"size": [64, 64], "counts": rle.encode()}).any()
    # the processor encoded the tracked queries' visible frames: with no hysteresis every track stays, so exactly the
    # listed entries
    listed = {(int(out.track_ids[t]), int(f)) for t, f in zip(out.frame_track_indices, out.frame_indices)}
    assert set(encoded) == listed and len(listed) == num_entries


def test_forward_with_a_session_reports_track_ids(toy_config):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(toy_config(clip_length=2, score_threshold=0.5)).eval()
    session = model.init_video_session()
    clips = torch.randn(2, 2, 3, 64, 64)
    with torch.no_grad():
        out = model(clips, video_session=session)
        plain = model(clips)
    assert isinstance(out, CaptionFormerTrackingOutput) and out.track_ids.shape == plain.scores.shape
    torch.testing.assert_close(out.scores, plain.scores)
    assert torch.equal(out.track_ids == -1, plain.scores < 0.5)
    assert session.num_frames == 4
    as_tuple = CaptionFormerForDenseVideoObjectCaptioning.forward(model, clips, video_session=model.init_video_session(), return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[-3], out.track_ids)
    assert as_tuple[-1] == out.frame_indices == [[0, 1], [2, 3]]
    assert not bool(out.mask_entries[out.track_ids == -1].any())
    # paper mode: the frames where a tracked query's mask is not empty (both clips are full: every frame is real);
    # at threshold 0 every query is tracked
    with torch.no_grad():
        every = model(clips, video_session=model.init_video_session(threshold=0.0))
    assert bool((every.track_ids >= 0).all())
    assert torch.equal(every.mask_entries, (every.masks_logits > 0).flatten(3).any(-1))
    assert bool(every.mask_entries.any())
    with pytest.raises(ValueError, match="`labels`"):
        model(clips, video_session=session, labels=[{}, {}])
    with pytest.raises(TypeError, match="CaptionFormerVideoSession"):
        model(clips, video_session=object())


def test_streaming_iterator_equals_tensor_and_batching(toy_config):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(loose(toy_config, clip_length=2)).eval()
    video = torch.randn(6, 3, 64, 64)
    whole = model.track_video(video, caption=False)
    streamed = model.track_video((video[i : i + 2] for i in range(0, 6, 2)), caption=False)
    batched = model.track_video(video, clip_batch_size=3, caption=False)
    for name in ("track_ids", "frame_indices", "frame_track_indices", "frame_boxes", "frame_scores"):
        assert torch.equal(getattr(whole, name), getattr(streamed, name)), name
    assert torch.equal(whole.track_ids, batched.track_ids) and torch.equal(whole.frame_indices, batched.frame_indices)
    torch.testing.assert_close(whole.frame_boxes, batched.frame_boxes, atol=0.05, rtol=0)


def test_single_frame_clips_track_online(toy_config):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(loose(toy_config, clip_length=1)).eval()
    # the same frame repeated: every query is the same object in every frame, so ids persist frame to frame
    video = torch.randn(1, 3, 64, 64).expand(5, -1, -1, -1)
    out = model.track_video(video, caption=False)
    assert out.num_frames == 5
    for position in range(len(out.track_ids)):
        assert out.frame_indices[out.frame_track_indices == position].tolist() == list(range(5))


def test_track_video_bad_input(toy_config):
    model = CaptionFormerForDenseVideoObjectCaptioning(toy_config(clip_length=2)).eval()
    with pytest.raises(ValueError, match="no frames"):
        model.track_video(torch.zeros(0, 3, 64, 64))
    with pytest.raises(ValueError, match="one video"):
        model.track_video(torch.zeros(2, 4, 3, 64, 64))
    with pytest.raises(ValueError, match="config.clip_length=2"):
        model.track_video([torch.zeros(3, 3, 64, 64)])
    with pytest.raises(TypeError, match="iterable of clips"):
        model.track_video(42)
    with pytest.raises(TypeError, match="predict_video"):
        model.track_video("video.mp4")
    with pytest.raises(ValueError, match="`clip_batch_size`"):
        model.track_video(torch.zeros(2, 3, 64, 64), clip_batch_size=0)
    with pytest.raises(ValueError, match="same size"):
        model.track_video([torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 96)])
    session = model.init_video_session()
    model.track_video(torch.zeros(2, 3, 64, 64), session=session, caption=False)
    with pytest.raises(ValueError, match="finalized"):
        model.finalize_video_session(session)


def test_long_video_streams_with_bounded_state(toy_config):
    """2,000 frames of tiny input stream through; the session state stays bounded."""
    torch.manual_seed(0)
    # a new model's class head starts at the focal prior (sigmoid 0.01): scores near 0.1, so a low threshold
    config = toy_config(clip_length=4, t_match=8, k_match=2, t_agg=4, score_threshold=0.01,
                         hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1,
                         segmenter_overrides={"num_queries": 3})
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    session = model.init_video_session()
    base = torch.randn(1, 3, 32, 32)
    sizes = []

    def clips():
        for c in range(500):
            if c in (100, 499):
                sizes.append(session.memory_nbytes())
            yield base.expand(4, -1, -1, -1) + 0.01 * torch.randn(4, 3, 32, 32)

    out = model.track_video(clips(), session=session, clip_batch_size=25, max_new_tokens=2)
    assert out.num_frames == 2000
    tracks = len(session.tracker.tracks)
    assert tracks >= 1
    assert all(len(t.memory) <= 8 and len(t.caption_pool) <= 8 for t in session.tracker.tracks)
    # per track: 8 embeddings, and 2 * t_agg pool entries each holding at most a frame at the vision encoder's size,
    # a query and a patch-grid mask
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    hidden = config.segmenter_config.hidden_dim
    bound = tracks * 4 * (8 * hidden + 8 * (3 * vision.image_size**2 + hidden + grid**2))
    assert 0 < sizes[0] <= bound and sizes[1] <= bound


def test_captions_come_from_the_sampled_clips_only(toy_config):
    """The vision encoder and Q-Former run after tracking on the sampled clips only, and give the captions of the
    Q-Former run on each sampled observation's own frame, query and mask, aggregated by score."""
    torch.manual_seed(0)
    config = loose(toy_config, clip_length=2, t_agg=2, k_match=1, t_match=2)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    clips = [torch.randn(1, 2, 3, 64, 64) for _ in range(6)]
    session = model.init_video_session()
    recorded = []
    encoded = []
    handle = model.model.caption_head.vision_model.register_forward_hook(
        lambda module, args, kwargs_out: encoded.append(kwargs_out.last_hidden_state.shape[0])
    )
    with torch.no_grad():
        for c in clips:
            recorded.append(model(c, video_session=session))
    assert encoded == []  # nothing captioned while tracking
    result = model.finalize_video_session(session, max_new_tokens=4)
    handle.remove()
    tracks = session.tracker.finalize()
    samples = [session.tracker.caption_samples(t) for t in tracks]
    assert sum(encoded) == len({o.clip_index for s in samples for o in s}) < len(clips) * config.segmenter_config.num_queries
    frame = model.caption_frame_index(2)
    expected = []
    with torch.no_grad():
        for track, observations in zip(tracks, samples):
            queries = []
            for o in observations:
                out = recorded[o.clip_index]
                q = int((out.track_ids[0] == track.track_id).nonzero()[0, 0])
                queries.append(model.encode_captions(
                    clips[o.clip_index][0, frame][None], torch.zeros(1, dtype=torch.long),
                    out.object_queries[0, q][None], out.masks_logits[0, q, frame][None],
                )[0])
            scores = torch.tensor([o.score for o in observations])
            expected.append(model.generate_captions(torch.stack(queries)[None], scores[None], max_new_tokens=4)[0])
    for row, want in zip(result.caption_ids, expected):
        assert row[: len(want)].tolist() == want.tolist()


def test_track_video_masks_at_the_requested_size(toy_config):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(loose(toy_config, clip_length=1)).eval()
    video = torch.randn(2, 3, 64, 96)
    _, full, _ = track_with_masks(model, video, 64, 96, caption=False)
    _, resized, _ = track_with_masks(model, video, 64, 96, content=(64, 80), original=(32, 40), caption=False)
    assert len(full) == len(resized) > 0
    for a, b in zip(full, resized):
        big = mask_utils.decode({"size": [64, 96], "counts": a.encode()})[:, :80]
        small = mask_utils.decode({"size": [32, 40], "counts": b.encode()})
        # the content region downsampled 2x: nearly the same mask
        assert (big[::2, ::2] != small).mean() < 0.1


def _ranked_by_solving_every_slot(costs, k):
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    means = []
    for matrix in costs:
        rows, cols = linear_sum_assignment(matrix)
        means.append(matrix[rows, cols].mean())
    return np.argsort(np.array(means, dtype=np.float64), kind="stable")[:k].tolist()


@pytest.mark.parametrize("rows, cols", [(5, 8), (8, 5), (6, 6)])
def test_best_memory_slots_equal_ranking_every_slot_and_solve_fewer(rows, cols, monkeypatch):
    """The bound-pruned top-K memory slots are exactly those of solving every slot's assignment (ties included:
    repeated memory clips), with far fewer assignments solved."""
    import numpy as np

    from captionformer_hf.modeling import video_level_captionformer as tracking

    calls = []
    solve = tracking.linear_sum_assignment
    monkeypatch.setattr(tracking, "linear_sum_assignment", lambda m: calls.append(1) or solve(m))
    rng = np.random.default_rng(0)
    solved = 0
    for trial in range(40):
        costs = rng.random((60, rows, cols)).astype(np.float32)
        costs[7] = costs[3]  # exact ties
        costs[20 + trial % 30] *= 0.3  # a few clearly better slots
        for k in (1, 7):
            calls.clear()
            assert tracking.best_memory_slots(costs, k).tolist() == _ranked_by_solving_every_slot(costs, k)
            solved += len(calls)
    assert solved < 0.5 * 40 * 2 * 60


def test_duplicate_queries_drop_the_lower_scoring_of_overlapping_masks():
    from captionformer_hf.modeling.tracking_captionformer import duplicate_queries

    logits = torch.full((1, 4, 1, 4, 4), -1.0)
    logits[0, 0, 0, :2, :2] = 1  # 4 pixels
    logits[0, 1, 0, :2, :3] = 1  # 6 pixels: IoU with query 0 = 4 / 6
    logits[0, 2, 0, 2:, 2:] = 1  # elsewhere
    logits[0, 3, 0, :2, :2] = 1  # the same as query 0, but not kept
    scores = torch.tensor([[0.7, 0.9, 0.8, 0.95]])
    keep = torch.tensor([[True, True, True, False]])
    # greedy by score: 1 (0.9) is chosen, 2 (0.8) does not overlap, 0 (0.7) overlaps 1 at 0.667
    assert duplicate_queries(logits, scores, keep, 0.5).tolist() == [[True, False, False, False]]
    assert duplicate_queries(logits, scores, keep, 0.7).tolist() == [[False, False, False, False]]
    assert not duplicate_queries(logits, scores, torch.tensor([[True, False, False, False]]), 0.0).any()


def test_duplicate_queries_are_found_in_every_clip_of_a_batch():
    """Two queries on the same object in each of 3 clips: the lower-scoring one is the duplicate in each clip."""
    from captionformer_hf.modeling.tracking_captionformer import duplicate_queries

    logits = torch.full((3, 2, 1, 8, 8), -5.0)
    logits[:, :, :, 2:6, 2:6] = 5.0
    scores = torch.tensor([[0.9, 0.8]] * 3)
    dup = duplicate_queries(logits, scores, scores > 0.5, 0.5)
    assert dup.tolist() == [[False, True]] * 3
