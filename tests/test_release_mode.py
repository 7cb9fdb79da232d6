"""Release mode of the video level: parity with a re-implementation of the released code's video inference.

The reference below is written from reading gabfstr/CaptionFormer (captionformer_video/video_captionformer_model.py:
the top-K vote tracking loop, ``match_from_vote_embds``, ``inference_video_dvoc`` (boxes),
``inference_video_dvoc_mask`` (masks), ``_apply_hysteresis_filter``, ``_apply_per_frame_score_threshold`` and the
caption clip sampling of the forward pass); it works on the release's representation (class logits with a
no-object column, two objectness logits, boxes as normalised (x, y, w, h), per-track lists over all frames with
None where absent) and is fed the same per-clip outputs as the package's ``CaptionFormerReleaseTracker``.
"""

import math

import pytest
import torch
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
from captionformer_hf.modeling.release_tracking_captionformer import CaptionFormerReleaseTracker, release_hysteresis
from captionformer_hf.processing.video_processing_captionformer import release_boxes


# ------------------------------------------------------------------------------------------- reference (release)
def ref_vote_match(memory, current, top_k, half=False):
    """``half``: as under the release's fp16 autocast, where ``norm`` and the division run in float32 and ``torch.mm``
    takes fp16 operands and gives an fp16 product (the rest on the CPU, in the costs' fp16)."""
    current = current / current.norm(dim=1)[:, None]
    weighted, permutations, totals = [], [], []
    for i, remembered in enumerate(memory):
        target = remembered / remembered.norm(dim=1)[:, None]
        if half:
            cost = (1 - torch.mm(current.half(), target.half().transpose(0, 1))).cpu()
        else:
            cost = (1 - torch.mm(current, target.transpose(0, 1))).cpu()
        rows, cols = linear_sum_assignment(cost.transpose(0, 1))
        permutations.append(cols)
        totals.append(cost[cols, rows].sum())
        weighted.append(cost * (i + 1))
    totals = torch.stack(totals).float()
    if totals.shape[0] < top_k:
        return permutations[torch.topk(totals, k=1, largest=False)[1]]
    chosen = torch.topk(totals, k=top_k, largest=False)
    return linear_sum_assignment(torch.stack(weighted)[chosen[1]].mean(0).transpose(0, 1))[1]


def ref_scores(cls, obj, person=None):
    """get_pred_score; with fp16 logits (autocast) the sigmoid stays fp16, softmax runs in float32 (autocast casts
    its input), the product with it and the power are float32. ``person``: FILTER_PERSON_ONLY's class."""
    per_class = cls[:, :-1].sigmoid()
    objectness = torch.softmax(obj.float(), dim=-1)[:, :-1]
    scores = (per_class * objectness) ** 0.5
    if person is not None:
        scores = scores[:, person : person + 1]
    return scores.max(dim=1).values


def ref_track(clips, top_k, top_t, half=False, person=None):
    """The tracking loop: per clip the permuted class logits, objectness logits, predictions and embeddings, and the
    scores (queries, clips)."""
    out_cls, out_obj, out_pred, out_emb = [clips[0]["cls"]], [clips[0]["obj"]], [clips[0]["pred"]], [clips[0]["emb"]]
    memory = [clips[0]["emb"]]
    scores = torch.zeros(clips[0]["emb"].shape[0], len(clips))
    scores[:, 0] = ref_scores(clips[0]["cls"], clips[0]["obj"], person)
    for i in range(1, len(clips)):
        perm = ref_vote_match(memory, clips[i]["emb"], top_k, half)
        memory.append(clips[i]["emb"][perm])
        memory = memory[-top_t:]
        out_cls.append(clips[i]["cls"][perm])
        out_obj.append(clips[i]["obj"][perm])
        out_pred.append(clips[i]["pred"][perm])
        out_emb.append(clips[i]["emb"][perm])
        scores[:, i] = ref_scores(out_cls[-1], out_obj[-1], person)
    return out_cls, out_obj, out_pred, out_emb, scores


def ref_caption_plan(scores, clip_frames, num_t, method, threshold=0.3, middle=False, clip_length=1):
    """Per query with a best score of at least `threshold`: the (clip, frame) pairs and their weights (`method`:
    the release's "weighted mean" / "mean" over linspace clips, or None: no aggregation, the best clip).
    ``middle``: MIDDLE_FRAME_CAPTIONING / TEST_AGG_MIDDLE_CLIP, the clip ``num_frames // c // 2``."""
    aggregated = method is not None
    best, best_clip = scores.max(dim=1)
    middle_clip = sum(clip_frames) // clip_length // 2
    plans = {}
    for q in range(scores.shape[0]):
        if best[q] < threshold:
            continue
        if middle:
            chosen = [middle_clip]
        else:
            chosen = (torch.linspace(0, scores.shape[1] - 1, steps=num_t).long().tolist() if aggregated
                      else [int(best_clip[q])])
        pairs = []
        for c in chosen:
            frame = int(torch.randint(0, clip_frames[c], (1,))[0]) if clip_frames[c] > 1 else 0
            pairs.append((c, frame))
        if method == "weighted mean":
            s = torch.stack([scores[q][c] for c in chosen]).unsqueeze(-1)
            weights = (s / (torch.sum(s, dim=0, keepdim=True) + 1e-6)).flatten().tolist()
        else:  # the mean of the stacked outputs, or the one best clip
            weights = [1.0 / len(chosen)] * len(chosen)
        plans[q] = (pairs, weights)
    return plans


def ref_hysteresis(video_output, low, high, min_duration):
    scores = torch.tensor(video_output["pred_scores_per_frame"])
    if scores.numel() == 0:
        return video_output
    num_queries, frames = scores.shape
    active = torch.zeros_like(scores, dtype=torch.bool)
    for i in range(num_queries):
        forward = torch.zeros(frames, dtype=torch.bool)
        on = False
        for t in range(frames):
            if scores[i, t] >= high:
                on = True
            elif scores[i, t] < low:
                on = False
            forward[t] = on
        backward = torch.zeros(frames, dtype=torch.bool)
        on = False
        for t in range(frames - 1, -1, -1):
            if scores[i, t] >= high:
                on = True
            elif scores[i, t] < low:
                on = False
            backward[t] = on
        track = forward | backward
        count = 0
        for t in range(frames):
            if track[t]:
                count += 1
            else:
                if count < min_duration:
                    track[t - count : t] = False
                count = 0
        active[i] = track
    kept = active.any(dim=1).tolist()
    out = {key: [v for v, k in zip(video_output[key], kept) if k] for key in video_output if key != "pred_boxes"}
    if "pred_boxes" in video_output:
        rows = []
        for i, k in enumerate(kept):
            if k:
                rows.append([b if active[i, t] else None for t, b in enumerate(video_output["pred_boxes"][i])])
        out["pred_boxes"] = rows
    return out


def ref_per_frame_threshold(video_output, threshold):
    if threshold <= 0:
        return video_output
    if "pred_masks" in video_output:
        keep = [s > threshold for s in video_output["pred_scores"]]
        return {key: [v for v, k in zip(value, keep) if k] for key, value in video_output.items()}
    out = dict(video_output)
    out["pred_boxes"] = [[None if s <= threshold else b for s, b in zip(scores, row)]
                         for scores, row in zip(video_output["pred_scores_per_frame"], video_output["pred_boxes"])]
    return out


def ref_inference_scores(out_cls, out_obj, class_agnostic=False, person=None):
    """The head of inference_video_dvoc / inference_video_dvoc_mask: per-clip scores (clips, queries), the class-only
    video score and labels, the video objectness."""
    per_img_cls = torch.stack(out_cls)
    object_scores = torch.softmax(torch.stack(out_obj).float(), dim=-1)[:, :, 0]
    if person is not None:
        per_img_cls = per_img_cls[:, :, person : person + 1]
        per_img_scores, _ = per_img_cls[:, :, :].sigmoid().max(dim=-1)
        video_scores, labels = per_img_cls[:, :, :].mean(dim=0).sigmoid().max(dim=-1)
    else:
        per_img_scores, _ = per_img_cls[:, :, :-1].sigmoid().max(dim=-1)
        video_scores, labels = per_img_cls[:, :, :-1].mean(dim=0).sigmoid().max(dim=-1)
    scores = object_scores if class_agnostic else (per_img_scores * object_scores) ** 0.5
    return scores, video_scores, labels, object_scores.mean(dim=0)


def ref_map_labels(output, mapping):
    """LVVIS_ZS_VIDSTG_CLASS_FILTERING: tracks of unmapped labels dropped, the others' labels mapped."""
    if mapping is None:
        return output
    keep = [label in mapping for label in output["pred_labels"]]
    out = {key: [v for v, k in zip(value, keep) if k] for key, value in output.items()}
    out["pred_labels"] = [mapping[label] for label in out["pred_labels"]]
    return out


def ref_box_mode(out_cls, out_obj, out_pred, clip_frames, presence=0.2, class_agnostic=False, person=None,
                 mapping=None):
    """inference_video_dvoc (boxes): per-query lists over all frames; the boxes stay normalised here (the pixel
    conversion is compared separately)."""
    scores, video_scores, labels, _ = ref_inference_scores(out_cls, out_obj, class_agnostic, person)
    scores = scores.t()  # (queries, clips)
    keep = scores.t() > presence  # (clips, queries)
    keep_query = keep.any(dim=0)
    output = {"query": [], "pred_scores": [], "pred_labels": [], "pred_boxes": [], "pred_scores_per_frame": []}
    for q in range(keep_query.shape[0]):
        if not keep_query[q]:
            continue
        boxes, per_frame = [], []
        for c in range(len(out_pred)):
            for t in range(clip_frames[c]):
                boxes.append(out_pred[c][q, t].tolist() if keep[c, q] else None)
                per_frame.append(scores[q, c].item())
        output["query"].append(q)
        output["pred_scores"].append(video_scores[q].item())
        output["pred_labels"].append(int(labels[q]))
        output["pred_boxes"].append(boxes)
        output["pred_scores_per_frame"].append(per_frame)
    return ref_map_labels(output, mapping)


def ref_mask_mode(out_cls, out_obj, clip_frames, top=50, class_agnostic=False, person=None, mapping=None):
    scores, video_class, labels, video_objectness = ref_inference_scores(out_cls, out_obj, class_agnostic, person)
    scores = scores.t()  # (queries, clips)
    video_scores = video_class if class_agnostic else (video_class * video_objectness) ** 0.5
    chosen = video_scores.topk(min(top, video_scores.shape[0]), sorted=False)[1]
    per_frame = [[scores[int(q), c].item() for c in range(len(clip_frames)) for _ in range(clip_frames[c])]
                 for q in chosen]
    output = {"query": chosen.tolist(), "pred_scores": video_scores[chosen].tolist(),
              "pred_labels": labels[chosen].tolist(), "pred_masks": chosen.tolist(), "pred_scores_per_frame": per_frame}
    return ref_map_labels(output, mapping)


# ------------------------------------------------------------------------------------------------------ inputs
def ref_greedy_ids(mask_embed, half=False):
    """GREEDY_MATCHING: ``get_association_matrix`` (normalised embeddings, ``torch.mm``, softmax; under autocast an
    fp16 product and a float32 softmax) and ``greedy_extract_trajectories``, as the release writes them."""
    all_embeddings = torch.cat(mask_embed, dim=0)
    all_embeddings = all_embeddings / all_embeddings.norm(dim=1, keepdim=True)
    if half:
        similarity = torch.mm(all_embeddings.half(), all_embeddings.T.half()).float()
    else:
        similarity = torch.mm(all_embeddings, all_embeddings.T)
    asso_scores = torch.nn.functional.softmax(similarity, dim=-1)
    num_frames = len(mask_embed)
    num_tot_objs = asso_scores.shape[0]
    num_objs = num_tot_objs // num_frames
    idx = torch.arange(num_tot_objs)
    frame_ids = idx // num_objs
    mask = (frame_ids[:, None] != frame_ids[None, :])
    mask |= torch.eye(num_tot_objs, dtype=torch.bool)
    asso_scores = asso_scores * mask
    ids = torch.zeros(num_tot_objs, dtype=torch.int32)
    while ids.min() == 0:
        scores_3d = asso_scores.reshape(num_tot_objs, num_frames, num_objs)
        best_per_frame, best_id = scores_3d.max(dim=2)
        traj_scores = best_per_frame.sum(dim=1)
        ind = torch.argmax(traj_scores)
        id_count = ids.max() + 1
        merge_inds = torch.nn.functional.one_hot(best_id[ind], num_objs).reshape(-1).bool()
        ids += merge_inds.to(torch.int32) * id_count
        outer = torch.ger(1. - merge_inds.float(), 1. - merge_inds.float())
        asso_scores = asso_scores * outer
    return (ids - 1).reshape(num_frames, num_objs).numpy()


def ref_track_greedy(clips, half=False):
    """The release's loop with GREEDY_MATCHING: every clip (the first too) gathered by its trajectory ids."""
    grid_ids = ref_greedy_ids([clip["emb"] for clip in clips], half)
    outs = {key: [clip[key][torch.as_tensor(grid_ids[i])] for i, clip in enumerate(clips)]
            for key in ("cls", "obj", "pred", "emb")}
    scores = torch.stack([ref_scores(c, o) for c, o in zip(outs["cls"], outs["obj"])], dim=1)
    return outs["cls"], outs["obj"], outs["pred"], outs["emb"], scores


def make_clips(seed, num_clips=14, queries=6, dim=8, classes=3, frames_per_clip=(1,), adversarial=True):
    """Per-clip outputs in both representations: objects whose query slot moves from clip to clip, one that
    disappears and comes back, scores near every threshold, a track still alive at the end."""
    g = torch.Generator().manual_seed(seed)
    identities = torch.nn.functional.normalize(torch.randn(queries, dim, generator=g), dim=-1)
    clips = []
    for c in range(num_clips):
        order = torch.randperm(queries, generator=g)
        emb = identities[order] + 0.15 * torch.randn(queries, dim, generator=g)
        cls = torch.randn(queries, classes + 1, generator=g)
        obj = torch.randn(queries, 2, generator=g)
        if adversarial:
            for position, identity in enumerate(order.tolist()):
                # identity 0: strong all along; 1: gone in the middle, back at the end; 2: alive only at the end;
                # 3: hovering around the presence / hysteresis / caption thresholds
                level = {0: 4.0, 1: 3.0 if c < 4 or c >= num_clips - 3 else -6.0,
                         2: 3.0 if c >= num_clips - 2 else -6.0,
                         3: [0.0, -1.1, -0.6, 1.8, -2.5][c % 5]}.get(identity)
                if level is not None:
                    cls[position, :-1] = level + 0.3 * torch.randn(classes, generator=g)
                    obj[position] = torch.tensor([level, -level]) / 2
        length = frames_per_clip[c % len(frames_per_clip)] if c < num_clips - 1 else 1
        boxes = torch.rand(queries, length, 4, generator=g) * 0.5 + 0.1  # normalised (cx, cy, w, h)
        masks = torch.randn(queries, length, 6, 6, generator=g)
        clips.append({"emb": emb, "cls": cls, "obj": obj, "boxes": boxes, "masks": masks})
    return clips


def run_package(clips, box_mode, caption_seed=0, **kwargs):
    kwargs.setdefault("precision", "native")
    tracker = CaptionFormerReleaseTracker(box_mode=box_mode, **kwargs)
    start = 0
    for clip in clips:
        scores = ref_scores(clip["cls"], clip["obj"])  # S, as the model computes it
        objectness = torch.softmax(clip["obj"], dim=-1)[:, 0]
        frames = clip["boxes"].shape[1]
        tracker.update(clip["emb"], scores, clip["cls"][:, :-1], objectness, clip["boxes"],
                       masks=None if box_mode else clip["masks"], frame_indices=list(range(start, start + frames)))
        start += frames
    torch.manual_seed(caption_seed)
    return tracker, tracker.finalize()


def run_reference(clips, box_mode, k, t, t_agg, method, low, high, min_length, track_threshold=0.0, caption_seed=0,
                  half=False, class_agnostic=False, person=None, mapping=None, middle=False, clip_length=1,
                  greedy=False):
    """``half``: the release under fp16 autocast: fp16 class and objectness logits and predictions (outputs of linear
    layers and einsum), float32 embeddings (the decoder's layer norm), fp16 tracking costs. ``class_agnostic``,
    ``person`` (a class), ``mapping`` (label dict), ``middle``: the release's evaluation options."""
    frames = [clip["boxes"].shape[1] for clip in clips]
    preds = [clip["boxes"] if box_mode else clip["masks"] for clip in clips]
    cast = (lambda x: x.half()) if half else (lambda x: x)
    ref_clips = [{"emb": c["emb"], "cls": cast(c["cls"]), "obj": cast(c["obj"]), "pred": cast(p)}
                 for c, p in zip(clips, preds)]
    if greedy:
        out_cls, out_obj, out_pred, out_emb, scores = ref_track_greedy(ref_clips, half)
    else:
        out_cls, out_obj, out_pred, out_emb, scores = ref_track(ref_clips, k, t, half, person)
    torch.manual_seed(caption_seed)
    plans = ref_caption_plan(scores, frames, t_agg, method, middle=middle, clip_length=clip_length)
    options = {"class_agnostic": class_agnostic, "person": person, "mapping": mapping}
    if box_mode:
        output = ref_box_mode(out_cls, out_obj, out_pred, frames, **options)
    else:
        output = ref_mask_mode(out_cls, out_obj, frames, **options)
    output = ref_hysteresis(output, low, high, min_length)
    output = ref_per_frame_threshold(output, track_threshold)
    return output, plans, out_pred, out_emb


# ------------------------------------------------------------------------------------------------------ parity
SETTINGS = [
    # (box mode, k, t, t_agg, aggregation, hysteresis low/high/min, track threshold, frames per clip)
    (True, 3, 6, 5, "weighted", (0.4, 0.85, 3), 0.0, (1,)),  # VidSTG-like
    (True, 2, 4, 4, "weighted", (0.3, 0.8, 5), 0.0, (1,)),  # BenSMOT-like
    (True, 7, 100, 32, "mean", (0.4, 0.85, 3), 0.35, (1,)),  # more sampled clips than clips, frame threshold
    (False, 2, 5, 8, "weighted", (0.3, 0.9, 5), 0.0, (1,)),  # VLN-like (masks)
    (False, 1, 1, 8, "best", (0.0, 0.0, 1), 0.5, (5, 3, 5)),  # LV-VIS-like: T = 5, adjacent matching, no hysteresis
]


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("seed", range(4))
def test_release_video_level_equals_the_release(setting, seed):
    box_mode, k, t, t_agg, aggregation, (low, high, min_length), threshold, frames_per_clip = setting
    clips = make_clips(seed, frames_per_clip=frames_per_clip)
    tracker, tracks = run_package(
        clips, box_mode, k_match=k, t_match=t, t_agg=t_agg, aggregation=aggregation, hysteresis_low=low,
        hysteresis_high=high, hysteresis_min_length=min_length, track_score_threshold=threshold,
        caption_seed=seed, clip_length=max(frames_per_clip),
    )
    reference, plans, out_pred, out_emb = run_reference(
        clips, box_mode, k, t, t_agg, {"weighted": "weighted mean", "mean": "mean", "best": None}[aggregation], low,
        high, min_length, threshold, caption_seed=seed
    )
    # the same slots, in the same order for boxes (mask mode: a set, the release's top-k is unsorted)
    ours = {track.slot: track for track in tracks}
    assert (list(ours) if box_mode else sorted(ours)) == (reference["query"] if box_mode else sorted(reference["query"]))
    assert tracks, "the case keeps no track: it tests nothing"
    by_query = dict(zip(reference["query"], range(len(reference["query"]))))
    frame_clip = [(c, f) for c, clip in enumerate(clips) for f in range(clip["boxes"].shape[1])]
    for slot, track in ours.items():
        r = by_query[slot]
        assert track.score == pytest.approx(reference["pred_scores"][r], abs=1e-6)
        assert track.label == reference["pred_labels"][r]
        if box_mode:
            expected = [(i, box) for i, box in enumerate(reference["pred_boxes"][r]) if box is not None]
            assert [f[2] for f in track.frames] == [i for i, _ in expected]
            for (c, f, index, score), (_, box) in zip(track.frames, expected):
                assert tracker.clips[c]["boxes"][slot, f].tolist() == box
                assert score == pytest.approx(reference["pred_scores_per_frame"][r][index], abs=0)
        else:  # every frame, with the slot's (permuted) mask of that clip
            assert [f[2] for f in track.frames] == list(range(len(frame_clip)))
            for c, f, index, score in track.frames:
                assert torch.equal(tracker.clips[c]["masks"][slot, f], out_pred[c][slot, f])
                assert score == pytest.approx(reference["pred_scores_per_frame"][r][index], abs=0)
        # captions: the same clips, frames and weights, and the same permuted queries there
        pairs, weights = plans.get(slot, ([], []))
        assert track.caption_clips == pairs
        assert track.caption_weights == pytest.approx(weights, abs=1e-7)
        for c, _ in pairs:
            assert torch.equal(tracker.clips[c]["embeddings"][slot], out_emb[c][slot])


OPTIONS = [
    {"class_agnostic": True},  # CLASS_AGNOSTIC_INFERENCE
    {"person": 1},  # FILTER_PERSON_ONLY (class 772 of LV-VIS; class 1 of 3 here)
    {"mapping": {0: 5, 2: 7}},  # LVVIS_ZS_VIDSTG_CLASS_FILTERING (class 1 unmapped: its tracks dropped)
    {"middle": True},  # MIDDLE_FRAME_CAPTIONING / TEST_AGG_MIDDLE_CLIP
]


@pytest.mark.parametrize("options", OPTIONS, ids=["class-agnostic", "person-only", "label-mapping", "middle-clip"])
@pytest.mark.parametrize("setting", [SETTINGS[0], SETTINGS[3], SETTINGS[4]], ids=["boxes", "masks", "masks-T5"])
@pytest.mark.parametrize("seed", range(2))
def test_release_evaluation_options_equal_the_release(setting, options, seed):
    """The release's evaluation switches, each against the transcription of the release with it: the same kept
    tracks, labels (person-only: the class itself, where the release reports 0, its index in the one-class slice),
    track and per-frame scores, boxes, and caption clips and weights."""
    box_mode, k, t, t_agg, aggregation, (low, high, min_length), threshold, frames_per_clip = setting
    clips = make_clips(seed, frames_per_clip=frames_per_clip)
    package_options = {"class_agnostic": options.get("class_agnostic", False), "score_class": options.get("person"),
                       "label_mapping": options.get("mapping"), "middle_clip_caption": options.get("middle", False)}
    tracker, tracks = run_package(
        clips, box_mode, k_match=k, t_match=t, t_agg=t_agg, aggregation=aggregation, hysteresis_low=low,
        hysteresis_high=high, hysteresis_min_length=min_length, track_score_threshold=threshold, caption_seed=seed,
        clip_length=max(frames_per_clip), **package_options,
    )
    reference, plans, _, _ = run_reference(
        clips, box_mode, k, t, t_agg, {"weighted": "weighted mean", "mean": "mean", "best": None}[aggregation], low,
        high, min_length, threshold, caption_seed=seed, clip_length=max(frames_per_clip), **options
    )
    ours = {track.slot: track for track in tracks}
    assert sorted(ours) == sorted(reference["query"])
    assert tracks or "mapping" in options, "the case keeps no track: it tests nothing"
    for r, slot in enumerate(reference["query"]):
        track = ours[slot]
        assert track.score == pytest.approx(reference["pred_scores"][r], abs=1e-6)
        assert track.label == reference["pred_labels"][r] + (options.get("person") or 0)
        per_frame = reference["pred_scores_per_frame"][r]
        assert [score for *_, score in track.frames] == pytest.approx([per_frame[f[2]] for f in track.frames], abs=1e-6)
        if box_mode:
            assert [f[2] for f in track.frames] == [i for i, b in enumerate(reference["pred_boxes"][r]) if b is not None]
        pairs, weights = plans.get(slot, ([], []))
        assert track.caption_clips == pairs
        assert track.caption_weights == pytest.approx(weights, abs=1e-7)


def test_release_evaluation_options_change_the_outcome():
    """Each option changes what the default gives on these clips (else the test above could not tell them apart)."""
    for setting in (SETTINGS[0], SETTINGS[3]):
        box_mode, k, t, t_agg, aggregation, (low, high, min_length), threshold, frames_per_clip = setting
        clips = make_clips(0, frames_per_clip=frames_per_clip)
        common = dict(k_match=k, t_match=t, t_agg=t_agg, aggregation=aggregation, hysteresis_low=low,
                      hysteresis_high=high, hysteresis_min_length=min_length, track_score_threshold=threshold)

        def summary(**options):
            _, tracks = run_package(clips, box_mode, **common, **options)
            return [(t.slot, round(t.score, 6), t.label, [round(f[3], 6) for f in t.frames], t.caption_clips)
                    for t in tracks]

        default = summary()
        for options in ({"class_agnostic": True}, {"score_class": 1}, {"label_mapping": {0: 5, 2: 7}},
                        {"middle_clip_caption": True}):
            assert summary(**options) != default, (box_mode, options)


def test_release_evaluation_options_through_the_config(toy_config):
    """The config's release_* settings reach the tracker; the mapped labels are named by `release_id2label`; JSON
    string keys are read back as ids; a middle-clip caption with an order-aware aggregation is refused."""
    config = toy_config(video_inference_mode="release", release_class_agnostic=True, release_score_class=1,
                        release_middle_clip_caption=True, release_label_mapping={"0": 5, "2": 7},
                        release_id2label={"5": "dog", "7": "cat"}, release_captions_per_video=3)
    assert CaptionFormerReleaseTracker.from_config(config).captions_per_video == 3
    with pytest.raises(ValueError, match="release_captions_per_video"):
        toy_config(release_captions_per_video=0)
    assert config.release_label_mapping == {0: 5, 2: 7} and config.release_id2label == {5: "dog", 7: "cat"}
    reloaded = type(config).from_dict(config.to_dict())
    assert reloaded.release_label_mapping == {0: 5, 2: 7}
    tracker = CaptionFormerReleaseTracker.from_config(config)
    assert (tracker.class_agnostic, tracker.score_class, tracker.middle_clip_caption, tracker.label_mapping) == (
        True, 1, True, {0: 5, 2: 7})
    with pytest.raises(ValueError, match="release_score_class"):
        toy_config(release_score_class=10_000)
    with pytest.raises(ValueError, match="release_label_mapping"):
        toy_config(release_label_mapping={"a": 1})
    with pytest.raises(ValueError, match="middle_clip_caption"):
        CaptionFormerReleaseTracker(middle_clip_caption=True, aggregation="concat")


def test_release_hysteresis_by_hand():
    # on at >= high, off below low, kept in between; both directions; short runs dropped unless at the end
    assert release_hysteresis([0.5, 0.9, 0.5, 0.2, 0.5, 0.9], 0.4, 0.85, 2) == [True, True, True, False, True, True]
    assert release_hysteresis([0.9, 0.1, 0.1, 0.9], 0.4, 0.85, 2) == [False, False, False, True]
    assert release_hysteresis([0.6, 0.6, 0.6], 0.4, 0.85, 1) == [False, False, False]


def test_release_boxes_follow_the_release_conversion():
    # (x, y, w, h) = (0.1, 0.2, 0.3, 0.4) of a 64x128 input whose content is 48x96, to a 480x960 video
    boxes = torch.tensor([[0.1 + 0.15, 0.2 + 0.2, 0.3, 0.4], [0.9 + 0.3, 0.5, 0.6, 0.2]])
    out = release_boxes(boxes, (64, 128), (48, 96), (480, 960))
    ratio_w, ratio_h = 128 / 96, 64 / 48
    expected = [round(0.1 * ratio_w * 960), round(0.2 * ratio_h * 480), round(0.3 * ratio_w * 960), round(0.4 * ratio_h * 480)]
    assert out[0] == expected
    # each coordinate clamped to [0, 1] on its own (so x + w may pass the frame's edge, as in the release)
    assert out[1][0] == 960 and out[1][2] == round(0.6 * ratio_w * 960)


# ------------------------------------------------------------------------------------------------ with a model
@pytest.mark.parametrize("box_only", [False, True])
def test_a_release_mode_model_tracks_every_slot_end_to_end(toy_config, box_only):
    torch.manual_seed(0)
    extra = {"box_head_layers": 2, "box_only": True} if box_only else {}
    config = toy_config(clip_length=2, video_inference_mode="release", presence_threshold=0.0,
                         caption_score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0,
                         hysteresis_min_length=1, t_agg=3, **extra)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    video = torch.randn(5, 3, 64, 64)  # clips of 2, 2 and 1 frame (the last one is not padded)
    from captionformer_hf.processing import CaptionFormerVideoProcessor, VideoGeometry

    geometry = VideoGeometry((64, 64), (64, 64), (64, 64))
    processor = CaptionFormerVideoProcessor()
    rles = {}
    session = model.init_video_session()
    assert session.mode == "release" and not session.video_level.pads_short_clips
    out = model.track_video(video, session=session, max_new_tokens=2,
                            on_clip_batch=lambda o: rles.update(processor.post_process_clip_masks(o, geometry)))
    num_queries = config.segmenter_config.num_queries
    assert out.video_inference_mode == "release" and sorted(out.track_ids.tolist()) == list(range(num_queries))
    assert [c["num_frames"] for c in session.tracker.clips] == [2, 2, 1]
    if box_only:
        assert rles == {}
    else:  # masks on every frame of every kept track, each slot's own
        assert len(rles) == num_queries * 5 == len(out.frame_indices)
        assert {(int(out.track_ids[t]), int(f)) for t, f in zip(out.frame_track_indices, out.frame_indices)} == set(rles)
        # the session keeps masks only on the caption head's patch grid
        grid = model.model.caption_head.grid_size
        assert session.tracker.clips[0]["masks"].shape == (num_queries, 2, grid, grid)
    assert bool(out.captioned.all()) and out.caption_ids.shape[0] == num_queries
    # `threshold` is the paper mode's pruning threshold only; a release box model's is `presence_threshold`
    with pytest.raises(ValueError, match="`threshold` is the paper mode's per-clip pruning threshold"):
        model.init_video_session(threshold=0.3)
    if box_only:
        assert model.init_video_session(presence_threshold=0.35).tracker.presence_threshold == 0.35
    else:
        with pytest.raises(ValueError, match="mask model has no presence threshold"):
            model.init_video_session(presence_threshold=0.3)
    assert not math.isnan(float(out.scores.sum()))


@pytest.mark.parametrize("precision", ["native", "fp16_autocast"])
def test_release_tracker_runs_in_bfloat16_and_float16(precision):
    """scipy's assignment takes no bfloat16: the costs are cast to float32 for it (a bf16 session used to crash)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 16, generator=g)
    for dtype in (torch.bfloat16, torch.float16):
        tracker = CaptionFormerReleaseTracker(k_match=2, t_match=3, box_mode=True, precision=precision)
        for clip in range(4):
            embeddings = (base[torch.randperm(5, generator=g)] + 0.01 * torch.randn(5, 16, generator=g)).to(dtype)
            perm = tracker.update(embeddings, torch.rand(5, generator=g).to(dtype), torch.randn(5, 3, generator=g),
                                  torch.rand(5, generator=g), torch.rand(5, 1, 4, generator=g))
            assert sorted(perm.tolist()) == list(range(5))
        # the slots follow the objects: each slot holds the same base embedding in every clip
        slots = torch.stack([torch.nn.functional.normalize(c["embeddings"].float(), dim=-1) for c in tracker.clips])
        reference = torch.nn.functional.normalize(base, dim=-1)
        assert (torch.einsum("csd,td->cst", slots, reference).argmax(-1) == slots[0].matmul(reference.T).argmax(-1)).all()


def test_release_hysteresis_compares_in_float32_on_the_thresholds():
    """A score of exactly float32(0.9) against VLN's 0.9: the release (a float32 tensor against a Python float, which
    torch casts to float32) switches the track on; a float64 comparison would not (0.899999976 < 0.9)."""
    on_high = float(torch.tensor(0.9, dtype=torch.float32))
    assert on_high < 0.9 and bool(torch.tensor([on_high]) >= 0.9)  # what the release's comparison gives
    assert release_hysteresis([on_high] * 5, 0.3, 0.9, 5) == [True] * 5
    on_low = float(torch.tensor(0.3, dtype=torch.float32))  # exactly on the low threshold: stays on
    assert release_hysteresis([on_high, on_low, on_low, on_high, on_high], 0.3, 0.9, 5) == [True] * 5
    below = float(torch.tensor(0.3, dtype=torch.float32).nextafter(torch.tensor(0.0)))
    assert release_hysteresis([on_high, below, on_high], 0.3, 0.9, 1) == [True, False, True]


def test_release_beam_search_normalises_finished_beams_without_their_end_token(toy_config):
    """transformers 4.28 (the release's) divides a finished beam's log-probability by its length without the end
    token, transformers 5 with it: with ``beam_length_normalisation="release"`` the returned scores are the former, and
    on this LM (an end token made likely by a bias) the release keeps longer captions where transformers 5 keeps
    two-token ones."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning

    class EndBias(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, 0] += 2.0
            return scores

    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(toy_config()).eval()
    queries = torch.randn(8, 5, model.config.qformer_config.hidden_size)
    results = {}
    for convention in ("transformers", "release"):
        model.generation_config.beam_length_normalisation = convention
        out = model.generate_captions(queries, num_beams=4, max_new_tokens=6, min_new_tokens=1, eos_token_id=[0],
                                      pad_token_id=1, output_scores=True, return_dict_in_generate=True,
                                      length_penalty=1.0, logits_processor=LogitsProcessorList([EndBias()]))
        steps = model.language_model.compute_transition_scores(out.sequences, out.scores, out.beam_indices,
                                                               normalize_logits=False)
        lengths = []
        for i, sequence in enumerate(out.sequences.tolist()):
            length = sequence.index(0) + 1  # every beam here ends with the end token
            lengths.append(length)
            denominator = length - 1 if convention == "release" else length
            assert float(out.sequences_scores[i]) == pytest.approx(float(steps[i, :length].sum()) / denominator, abs=1e-4)
        results[convention] = lengths
    assert results["transformers"] == [2] * 8 and min(results["release"]) > 2


@pytest.mark.parametrize("box_only", [False, True])
def test_each_threshold_means_one_thing_through_predict_video_and_the_demo(toy_config, box_only):
    """`threshold` prunes paper-mode queries only; `presence_threshold` is a release box model's; the demo's slider
    becomes whichever the model has (none for a release mask model)."""
    import numpy as np

    from captionformer_hf import CaptionFormerProcessor, predict_video
    from captionformer_hf.processing import CaptionFormerVideoProcessor, DenseVideoObjectCaptioningPipeline
    from captionformer_hf.spaces.demo import DemoHandler
    from captionformer_hf.toy import toy_tokenizer

    torch.manual_seed(0)
    extra = {"box_head_layers": 2, "box_only": True} if box_only else {}
    release = CaptionFormerForDenseVideoObjectCaptioning(toy_config(video_inference_mode="release", **extra)).eval()
    paper = CaptionFormerForDenseVideoObjectCaptioning(toy_config()).eval()
    processor = CaptionFormerProcessor(CaptionFormerVideoProcessor(size={"shortest_edge": 64, "longest_edge": 64}),
                                       toy_tokenizer())
    video = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="`presence_threshold` is the release mode's"):
        predict_video(paper, processor, video, presence_threshold=0.5, caption=False)
    with pytest.raises(ValueError, match="`threshold` is the paper mode's per-clip pruning threshold"):
        predict_video(release, processor, video, threshold=0.5, caption=False)
    if box_only:  # presence 1.0: nothing is present in any clip, so no trajectory; 0.0: every slot is
        assert predict_video(release, processor, video, presence_threshold=1.0, caption=False)["trajectories"] == []
        assert len(predict_video(release, processor, video, presence_threshold=0.0, caption=False,
                                 tracker_overrides={"hysteresis_low": 0.0, "hysteresis_high": 0.0,
                                                    "hysteresis_min_length": 1})["trajectories"]) > 0
    else:
        with pytest.raises(ValueError, match="mask model has no presence threshold"):
            predict_video(release, processor, video, presence_threshold=0.5, caption=False)
    for model, expected in ((paper, {"threshold": 0.4}),
                            (release, {"presence_threshold": 0.4} if box_only else {})):
        pipe = DenseVideoObjectCaptioningPipeline(model=model, processor=processor)
        assert DemoHandler(pipe).threshold_arguments(0.4) == expected


@pytest.mark.parametrize("precision", ["native", "fp16_autocast"])
def test_tied_mean_class_logits_break_as_in_the_release(precision):
    """The release averages a strided (clips, Q, C + 1)[:, :, :-1] stack; averaging the contiguous (clips, Q, C)
    rounds differently, and on exact ties of two classes the argmax can differ. Under fp16 autocast the mean and the
    sigmoid are fp16, which ties other pairs. Cases where the label depends on it: the package's is the release's."""
    half = precision == "fp16_autocast"
    cases = 0
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        num_clips, classes = int(torch.randint(3, 40, (1,), generator=g)), int(torch.randint(3, 20, (1,), generator=g))
        cls = torch.randn(num_clips, 4, classes + 1, generator=g)
        a, b = torch.randperm(classes, generator=g)[:2].tolist()
        cls[:, :, b] = cls[:, :, a].flip(0)  # the same values in another order: a tie up to rounding
        if half:
            cls = cls.half().float()  # what the model's fp16 logits hold
            release = cls.half()[:, :, :-1].mean(dim=0).sigmoid().max(dim=-1)[1]
            other = cls[:, :, :-1].mean(dim=0).sigmoid().max(dim=-1)[1]  # the float32 arithmetic
        else:
            release = cls[:, :, :-1].mean(dim=0).sigmoid().max(dim=-1)[1]
            other = cls[:, :, :-1].contiguous().mean(dim=0).sigmoid().max(dim=-1)[1]
        if torch.equal(release, other):
            continue
        cases += 1
        tracker = CaptionFormerReleaseTracker(box_mode=True, presence_threshold=-1.0, hysteresis_low=0.0,
                                              hysteresis_high=0.0, hysteresis_min_length=1, caption_score_threshold=2.0,
                                              precision=precision)
        identity = torch.eye(4, 8)
        for c in range(num_clips):
            tracker.update(identity, torch.full((4,), 0.9), cls[c, :, :-1], torch.full((4,), 0.9), torch.rand(4, 1, 4),
                           frame_indices=[c])
        labels = {track.slot: track.label for track in tracker.finalize()}
        assert [labels[q] for q in range(4)] == release.tolist()
    assert cases >= 3, "no case where the arithmetic changes the label: the test would test nothing"


def _inject_clip_outputs(model, clips, release_boxes_xywh=False):
    """Make the model's segmenter return the given per-clip outputs (the release's representation converted as the
    converter does: class logits without the no-object column, one objectness logit a - b), one clip per call, so
    that everything after it is the package's own: the score S the model computes, the session, finalize and the
    processor."""
    from types import SimpleNamespace

    calls = iter(clips)

    def forward(pixel_values_videos, **kwargs):
        clip = next(calls)
        final = {
            "object_queries": clip["emb"][None],
            "class_logits": clip["cls"][None, :, :-1],
            "objectness_logits": (clip["obj"][:, 0] - clip["obj"][:, 1])[None],
            "pred_boxes": clip["boxes"][None],
            "masks_logits": clip["masks"][None],
        }
        return [final], None, SimpleNamespace(attentions=None)

    model.model.segmenter.forward = forward


def ref_pixels(boxes, input_size, content_size, original_size):
    """The release's box conversion on its raw (x, y, w, h) boxes, in their dtype (fp16 under autocast): scaled to the
    content in place, clamped, scaled to the output size in place, rounded to whole pixels."""
    boxes = boxes.clone()
    boxes[:, [0, 2]] *= input_size[1] / content_size[1]
    boxes[:, [1, 3]] *= input_size[0] / content_size[0]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, 1)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, 1)
    boxes[:, [0, 2]] *= original_size[1]
    boxes[:, [1, 3]] *= original_size[0]
    return [box.round().to(torch.int).tolist() for box in boxes]


def _fp16_objectness(clips):
    """Objectness logits ``[d, 0]`` with ``d`` an fp16 value: the converter folds the release's two logits into one,
    ``a - b``, so only such logits give the package (sigmoid of the fp16 ``d``) exactly the release's inputs (softmax
    of the fp16 ``[a, b]``)."""
    for clip in clips:
        d = (clip["obj"][:, 0] - clip["obj"][:, 1]).half().float()
        clip["obj"] = torch.stack([d, torch.zeros_like(d)], dim=1)
    return clips


@pytest.mark.parametrize("precision", ["native", "fp16_autocast"])
@pytest.mark.parametrize("box_mode", [False, True])
@pytest.mark.parametrize("seed,association", [(0, "top_k"), (1, "top_k"), (2, "top_k"), (0, "greedy"), (1, "greedy")])
def test_release_parity_end_to_end_through_the_model(toy_config, box_mode, seed, association, precision):
    """From per-clip model outputs through the model's score conversion, the video session, finalize, the processor's
    mask encoding and post-processing, compared in pixels with the reference: the same tracks, scores, labels,
    per-frame scores, boxes (the release's pixel conversion) and masks (the release's resize, thresholded). With
    ``fp16_autocast`` the reference is the release under fp16 autocast, and the package computes on the CPU."""
    from captionformer_hf.processing import CaptionFormerVideoProcessor, VideoGeometry

    half = precision == "fp16_autocast"
    k, t, low, high, min_length = 2, 5, 0.3, 0.8, 3
    clips = make_clips(seed, frames_per_clip=(1,))
    if half:
        clips = _fp16_objectness(clips)
    raw = [clip["boxes"] for clip in clips]  # the release's raw (x, y, w, h); the model gives (x + w / 2, ...)
    injected = [dict(clip, boxes=torch.cat([b[..., :2] + b[..., 2:] / 2, b[..., 2:]], -1)) for clip, b in zip(clips, raw)]
    extra = {"box_head_layers": 2, "box_only": True} if box_mode else {}
    config = toy_config(clip_length=1, video_inference_mode="release", k_match=k, t_match=t, hysteresis_low=low,
                        hysteresis_high=high, hysteresis_min_length=min_length, release_precision=precision,
                        release_association=association, **extra)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    _inject_clip_outputs(model, injected)
    height, width = 32, 32  # the input (= content = original for masks); the masks are 6 x 6, resized to it
    geometry = VideoGeometry((height, width), (height, width), (height, width))
    # boxes: a 24 x 32 content padded to 32 x 32, from a 720 x 1280 video (scales where fp16 moves pixels)
    content, original = ((24, 32), (720, 1280)) if box_mode else ((height, width), (height, width))
    processor = CaptionFormerVideoProcessor()
    masks = {}
    out = model.track_video(torch.zeros(len(clips), 3, height, width), caption=False,
                            on_clip_batch=lambda o: masks.update(processor.post_process_clip_masks(o, geometry)))
    assert out.precision == precision
    result = processor.post_process_dense_captions(out, original, content, mask_rles=None if box_mode else masks)
    reference, _, out_pred, _ = run_reference(clips, box_mode, k, t, 8, "weighted mean", low, high, min_length,
                                              half=half, greedy=association == "greedy")
    ours = {trajectory["track_id"]: trajectory for trajectory in result["trajectories"]}
    assert sorted(ours) == sorted(reference["query"]) and ours
    moved = 0
    for r, slot in enumerate(reference["query"]):
        trajectory = ours[slot]
        assert trajectory["score"] == pytest.approx(reference["pred_scores"][r], abs=1e-4)  # (rounded to 4 places)
        if box_mode:
            expected = {i: box for i, box in enumerate(reference["pred_boxes"][r]) if box is not None}
            frames = sorted(expected)
            assert [f["frame_index"] for f in trajectory["frames"]] == frames
            pixels = ref_pixels(torch.tensor([expected[i] for i in frames], dtype=raw[0].dtype).to(
                torch.float16 if half else torch.float32), (height, width), content, original)
            assert [f["box"] for f in trajectory["frames"]] == pixels
            float32 = ref_pixels(torch.stack([raw[i][slot, 0] for i in frames]), (height, width), content, original)
            moved += sum(a != b for a, b in zip(pixels, float32))
        else:
            assert [f["frame_index"] for f in trajectory["frames"]] == list(range(len(clips)))
            for entry in trajectory["frames"]:
                # the release's mask: bilinear to the padded input, crop, to the original size, > 0
                logits = out_pred[entry["frame_index"]][slot, 0][None, None]
                expected = torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear",
                                                           align_corners=False)[0, 0] > 0
                decoded = mask_utils.decode({"size": [height, width], "counts": entry["mask_rle"].encode()})
                assert (decoded.astype(bool) == expected.numpy()).all()
        for entry in trajectory["frames"]:
            assert entry["score"] == pytest.approx(reference["pred_scores_per_frame"][r][entry["frame_index"]],
                                                   abs=1e-4)
    if box_mode and half:  # fp16 arithmetic moves boxes by a pixel: the comparison above can tell the two apart
        assert moved > 0


def test_release_tracker_matches_on_fp16_costs_as_the_release_under_autocast():
    """100 queries of 256 dimensions, nearly alike (as a converted model's no-object queries): fp16 costs (the
    release's ``torch.mm`` under autocast) permute the queries otherwise than float32 costs in most clips; the
    ``fp16_autocast`` tracker gives the permutation of the release under autocast in every clip, the ``native`` one
    the float32 release's."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(100, 256, generator=g) * 0.01 + torch.randn(256, generator=g)
    clips = [base[torch.randperm(100, generator=g)] + 0.005 * torch.randn(100, 256, generator=g) for _ in range(12)]
    trackers = {p: CaptionFormerReleaseTracker(k_match=3, t_match=5, precision=p) for p in ("native", "fp16_autocast")}
    memories = {False: [clips[0]], True: [clips[0]]}
    differ = 0
    for c, embeddings in enumerate(clips):
        perms = {p: tracker.update(embeddings, torch.rand(100), torch.randn(100, 3), torch.rand(100),
                                   torch.rand(100, 1, 4)) for p, tracker in trackers.items()}
        if c == 0:
            continue
        for half, precision in ((False, "native"), (True, "fp16_autocast")):
            expected = ref_vote_match(memories[half], embeddings, 3, half=half)
            assert perms[precision].tolist() == list(expected), (c, precision)
            memories[half] = (memories[half] + [embeddings[torch.as_tensor(expected)]])[-5:]
        differ += perms["native"].tolist() != perms["fp16_autocast"].tolist()
    assert differ >= 5, "fp16 and float32 costs agree: the case cannot tell the two arithmetics apart"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("precision", ["native", "fp16_autocast"])
def test_a_release_model_runs_in_each_dtype_and_precision(toy_config, dtype, precision):
    """A release-mode model loaded in float32 or bfloat16 runs a video end to end with either precision; with
    ``fp16_autocast`` the tracking output carries the fp16 tensors of the release (the processor encodes its masks)."""
    from captionformer_hf.processing import CaptionFormerVideoProcessor, VideoGeometry

    torch.manual_seed(0)
    config = toy_config(clip_length=2, video_inference_mode="release", release_precision=precision,
                        caption_score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval().to(dtype)
    geometry = VideoGeometry((64, 64), (64, 64), (64, 64))
    processor = CaptionFormerVideoProcessor()
    seen, rles = [], {}

    def on_clip_batch(outputs):
        seen.append((outputs.class_logits.dtype, outputs.masks_logits.dtype, outputs.object_queries.dtype))
        rles.update(processor.post_process_clip_masks(outputs, geometry))

    out = model.track_video(torch.randn(5, 3, 64, 64).to(dtype), max_new_tokens=2, on_clip_batch=on_clip_batch)
    if precision == "fp16_autocast":
        assert set(seen) == {(torch.float16, torch.float16, torch.float32)}
    else:
        assert set(seen) == {(dtype, dtype, dtype)}
    assert out.precision == precision and len(out.track_ids) > 0 and out.caption_ids is not None
    assert len(rles) == len(out.frame_indices) and torch.isfinite(out.scores).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_release_fp16_autocast_on_cuda_runs_the_segmenter_under_autocast(toy_config):
    """On CUDA ``fp16_autocast`` is the release's own autocast: the segmenter's linear outputs come out fp16 (not
    rounded afterwards), the layer-normed queries float32; the CPU's emulation sees the same dtypes."""
    torch.manual_seed(0)
    config = toy_config(clip_length=2, video_inference_mode="release", caption_score_threshold=0.0,
                        hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1)
    video = torch.randn(5, 3, 64, 64)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    dtypes, outputs = {}, {}
    for device in ("cpu", "cuda"):
        model = model.to(device)
        seen = []
        outputs[device] = model.track_video(video.to(device), max_new_tokens=2, on_clip_batch=lambda o: seen.append(
            (o.class_logits.dtype, o.pred_boxes.dtype, o.masks_logits.dtype, o.object_queries.dtype)))
        dtypes[device] = set(seen)
    assert dtypes["cuda"] == dtypes["cpu"] == {(torch.float16, torch.float32, torch.float16, torch.float32)}
    assert len(outputs["cuda"].track_ids) > 0


def test_predict_video_names_mapped_labels_with_release_id2label(toy_config):
    """With a label mapping, `predict_video`'s categories are the mapped ids named by `release_id2label` (the model's
    `id2label` names the classes before the mapping)."""
    import numpy as np

    from captionformer_hf import CaptionFormerProcessor, predict_video
    from captionformer_hf.processing import CaptionFormerVideoProcessor
    from captionformer_hf.toy import toy_tokenizer

    torch.manual_seed(0)
    base = toy_config()
    mapping = {c: 0 for c in range(base.num_labels)}  # every class -> the one target class 0
    config = toy_config(video_inference_mode="release", box_head_layers=2, box_only=True, release_label_mapping=mapping,
                        release_id2label={0: "any object"})
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    processor = CaptionFormerProcessor(CaptionFormerVideoProcessor(size={"shortest_edge": 64, "longest_edge": 64}),
                                       toy_tokenizer())
    result = predict_video(model, processor, np.zeros((2, 64, 64, 3), np.uint8), presence_threshold=0.0, caption=False,
                           tracker_overrides={"hysteresis_low": 0.0, "hysteresis_high": 0.0, "hysteresis_min_length": 1})
    assert result["trajectories"]
    assert {(t["category"], t["category_id"]) for t in result["trajectories"]} == {("any object", 0)}


def test_load_release_label_mapping_reads_the_release_json_one_based(tmp_path):
    import json

    from captionformer_hf.modeling.release_tracking_captionformer import load_release_label_mapping

    path = tmp_path / "lvvis_to_vidstg.json"
    path.write_text(json.dumps({"1": 3, "773": "1", "1196": 80}))
    assert load_release_label_mapping(path) == {0: 2, 772: 0, 1195: 79}
    assert load_release_label_mapping({"2": 2}) == {1: 1}
    with pytest.raises(ValueError, match="1-based"):
        load_release_label_mapping({"0": 1})


def ref_giou(a, b, eps=1e-7):
    """The release's generalized_box_iou (pairwise, with its 1e-7 clamps) on (x0, y0, x1, y1) boxes."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter_wh = (torch.min(a[:, None, 2:], b[:, 2:]) - torch.max(a[:, None, :2], b[:, :2])).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area_a[:, None] + area_b - inter
    iou = inter / union.clamp(min=eps)
    hull_wh = (torch.max(a[:, None, 2:], b[:, 2:]) - torch.min(a[:, None, :2], b[:, :2])).clamp(min=0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=eps)


def ref_temporal_match(src, tgt, w):
    """VideoHungarianTemporalMatcher.box_memory_efficient_forward on the release's representation (two objectness
    logits, raw (x, y, w, h) boxes (Q, T, 4))."""
    def prob(d):
        obj = d["obj"].softmax(-1)
        return torch.cat([(d["cls"][:, :-1].sigmoid() * obj[:, 0:1]) ** 0.5, obj[:, 1:2]], dim=1)

    def xyxy(b):
        x1, y1, bw, bh = b.unbind(-1)
        x2, y2 = x1 + bw, y1 + bh
        return torch.stack([x1, y1, torch.max(x1, x2), torch.max(y1, y2)], dim=-1)

    cost_class = torch.cdist(prob(src), prob(tgt), p=1)
    a = src["emb"] / src["emb"].norm(dim=1)[:, None]
    b = tgt["emb"] / tgt["emb"].norm(dim=1)[:, None]
    cost_embed = 1 - torch.mm(a, b.transpose(0, 1))
    last, first = src["boxes"].transpose(0, 1)[-1], tgt["boxes"].transpose(0, 1)[0]
    cost_bbox = torch.cdist(last, first, p=1)
    cost_giou = 1 - ref_giou(xyxy(last), xyxy(first))
    cost = w["class"] * cost_class + w["embed"] * cost_embed + w["giou"] * cost_giou + w["bbox"] * cost_bbox
    return linear_sum_assignment(cost.reshape(cost.shape[0], -1).cpu())[1]


@pytest.mark.parametrize("weights", [{"embed": 1.0, "class": 0.0, "bbox": 0.0, "giou": 0.0},
                                     {"embed": 1.0, "class": 2.0, "bbox": 5.0, "giou": 2.0},
                                     {"embed": 0.0, "class": 0.0, "bbox": 1.0, "giou": 1.0}])
@pytest.mark.parametrize("seed", range(3))
def test_release_hungarian_temporal_association_equals_the_release(weights, seed):
    """HUNGARIAN_TRACK_MATCHING: each clip's permutation is the release matcher's against the previous permuted clip;
    with box costs it differs from the top-K vote's on these clips."""
    clips = make_clips(seed, frames_per_clip=(2,))
    tracker = CaptionFormerReleaseTracker(box_mode=True, precision="native", association="hungarian_temporal",
                                          association_weights=weights, clip_length=2)
    top_k = CaptionFormerReleaseTracker(box_mode=True, precision="native", k_match=3, t_match=6, clip_length=2)
    previous = None
    differ = 0
    for c, clip in enumerate(clips):
        raw = torch.cat([clip["boxes"][..., :2] - clip["boxes"][..., 2:] / 2, clip["boxes"][..., 2:]], dim=-1)
        release = {"emb": clip["emb"], "cls": clip["cls"], "obj": clip["obj"], "boxes": raw}
        expected = list(range(6)) if previous is None else list(ref_temporal_match(previous, release, weights))
        args = (clip["emb"], ref_scores(clip["cls"], clip["obj"]), clip["cls"][:, :-1],
                torch.softmax(clip["obj"], dim=-1)[:, 0], clip["boxes"])
        perm = tracker.update(*args)
        assert perm.tolist() == expected, c
        differ += perm.tolist() != top_k.update(*args).tolist()
        previous = {key: value[torch.as_tensor(expected)] for key, value in release.items()}
    if weights["bbox"]:
        assert differ > 0


def test_release_association_settings_are_checked(toy_config):
    with pytest.raises(ValueError, match="needs a box model"):
        CaptionFormerReleaseTracker(box_mode=False, association="hungarian_temporal")
    with pytest.raises(ValueError, match="association_weights"):
        CaptionFormerReleaseTracker(association="hungarian_temporal", association_weights={"mask": 1.0})
    with pytest.raises(ValueError, match="release_association"):
        toy_config(release_association="offline")
    config = toy_config(video_inference_mode="release", box_head_layers=2, box_only=True,
                        release_association="hungarian_temporal", release_association_weights={"giou": 2.0})
    tracker = CaptionFormerReleaseTracker.from_config(config)
    assert tracker.association == "hungarian_temporal"
    assert tracker.association_weights == {"embed": 1.0, "class": 0.0, "bbox": 0.0, "giou": 2.0}


@pytest.mark.parametrize("box_mode", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_release_greedy_association_equals_the_release(box_mode, seed):
    """GREEDY_MATCHING: every clip associated at the end by the release's greedy extraction and gathered by its
    trajectory ids: the same kept tracks, scores, labels, per-frame boxes / masks and caption plans as the
    transcription (fp16 autocast: the end-to-end parity test); on these clips it differs from the top-K vote."""
    _, k, t, t_agg, aggregation, (low, high, min_length), threshold, _ = SETTINGS[0] if box_mode else SETTINGS[3]
    clips = make_clips(seed, num_clips=8)
    common = dict(k_match=k, t_match=t, t_agg=t_agg, aggregation=aggregation, hysteresis_low=low, hysteresis_high=high,
                  hysteresis_min_length=min_length, track_score_threshold=threshold, caption_seed=seed)
    tracker, tracks = run_package(clips, box_mode, association="greedy", **common)
    reference, plans, out_pred, out_emb = run_reference(
        clips, box_mode, k, t, t_agg, {"weighted": "weighted mean", "mean": "mean"}[aggregation], low, high,
        min_length, threshold, caption_seed=seed, greedy=True)
    ours = {track.slot: track for track in tracks}
    assert tracks and sorted(ours) == sorted(reference["query"])
    by_query = dict(zip(reference["query"], range(len(reference["query"]))))
    for slot, track in ours.items():
        r = by_query[slot]
        assert track.score == pytest.approx(reference["pred_scores"][r], abs=1e-6)
        assert track.label == reference["pred_labels"][r]
        if box_mode:
            expected = [(i, b) for i, b in enumerate(reference["pred_boxes"][r]) if b is not None]
            assert [f[2] for f in track.frames] == [i for i, _ in expected]
            for (c, f, _, _), (_, b) in zip(track.frames, expected):
                assert tracker.clips[c]["boxes"][slot, f].tolist() == b
        else:
            for c, f, _, _ in track.frames:
                assert torch.equal(tracker.clips[c]["masks"][slot, f], out_pred[c][slot, f])
        pairs, weights = plans.get(slot, ([], []))
        assert track.caption_clips == pairs
        assert track.caption_weights == pytest.approx(weights, abs=1e-6)
        for c, _ in pairs:
            assert torch.equal(tracker.clips[c]["embeddings"][slot], out_emb[c][slot])
    top_k = run_package(clips, box_mode, **common)[1]
    assert [(t.slot, t.frames) for t in top_k] != [(t.slot, t.frames) for t in tracks]


def test_release_greedy_association_by_hand():
    """Three clips of three objects A, B, C; clip 1 lists them as B, C, A (a 3-cycle), clip 2 as C, A, B. The
    greedy rounds give A, B, C the ids 0, 1, 2 in every clip; the release then gathers clip c by its ids: slot j
    takes query ids[c][j], so that only clip 0 keeps its objects in their slots (the release's behaviour, kept)."""
    from captionformer_hf.modeling.release_tracking_captionformer import greedy_trajectory_ids

    objects = torch.eye(3) * torch.tensor([3.0, 2.0, 1.0])[:, None] + 0.05  # A, B, C; A the most similar to itself
    orders = [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    embeddings = [objects[order] for order in orders]
    unit = torch.nn.functional.normalize(torch.cat(embeddings), dim=1)
    ids = greedy_trajectory_ids((unit @ unit.T).softmax(dim=-1), 3)
    assert ids.tolist() == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]  # the object's id, whatever its position
    assert ids.tolist() == ref_greedy_ids(embeddings).tolist()
    tracker = CaptionFormerReleaseTracker(precision="native", association="greedy")
    for e in embeddings:
        assert tracker.update(e, torch.ones(3), torch.zeros(3, 2), torch.ones(3), torch.rand(3, 1, 4)).tolist() == [0, 1, 2]
    tracker.associate_greedy()
    gathered = [[orders[c][q] for q in tracker.clips[c]["mask_keys"].tolist()] for c in range(3)]
    assert gathered == [[0, 1, 2], [2, 0, 1], [1, 2, 0]]  # the objects in slots 0, 1, 2 of each clip
    with pytest.raises(ValueError, match="num_clips"):
        greedy_trajectory_ids(torch.rand(9, 9), 2)


# ------------------------------------------------------------------------------- several captions per video
def ref_part_captions(scores, clip_frames, num_captions, c, threshold=0.3):
    """The release's NUM_CAPTIONS_PER_VIDEO > 1 branch of the forward pass (``scores`` (Q, clips)): per query, the
    per-frame list ``out_captions[qid]`` with ``(clip, frame in clip)`` of the caption written there (None: '')."""
    num_frames = sum(clip_frames)
    out_captions = [[None] * num_frames for _ in range(scores.shape[0])]
    for part in range(num_captions):
        idx_start = num_frames * part // num_captions
        idx_end = num_frames * (part + 1) // num_captions
        idx_clip_start = idx_start // c
        idx_clip_end = idx_end // c
        scores_part = torch.zeros_like(scores, dtype=torch.float)
        scores_part[:, idx_clip_start:idx_clip_end] = scores[:, idx_clip_start:idx_clip_end]
        max_score_part, max_score_index_part = scores_part.max(dim=1)
        for qid in range(max_score_index_part.shape[0]):
            if max_score_part[qid] < threshold:
                continue
            clip_selected = int(max_score_index_part[qid])
            nframes = clip_frames[clip_selected]
            frame = int(torch.randint(0, nframes, (1,))[0]) if nframes > 1 else 0  # generate's frame sample
            for idx in range(idx_start, idx_end):
                out_captions[qid][idx] = (clip_selected, frame)
            if idx_end >= num_frames:
                break
    return out_captions


def _per_frame_plan(track, num_frames):
    """A track's part captions as the release's per-frame list."""
    frames = [None] * num_frames
    for start, end, clip, frame in track.part_captions:
        for idx in range(start, end):
            frames[idx] = (clip, frame)
    return frames


@pytest.mark.parametrize("num_captions", [2, 3, 20])
@pytest.mark.parametrize("setting", [SETTINGS[0], SETTINGS[3], SETTINGS[4]], ids=["boxes", "masks", "masks-T5"])
@pytest.mark.parametrize("seed", range(2))
def test_release_several_captions_per_video_equal_the_release(setting, num_captions, seed):
    """NUM_CAPTIONS_PER_VIDEO: every kept track's per-frame captions come from the clips (and, for T > 1, the frames)
    that the release's loop picks, part by part, the last part included (its early break), with more parts than
    frames too; the tracks themselves are those of one caption per video."""
    box_mode, k, t, t_agg, aggregation, (low, high, min_length), threshold, frames_per_clip = setting
    clips = make_clips(seed, frames_per_clip=frames_per_clip)
    common = dict(k_match=k, t_match=t, t_agg=t_agg, aggregation=aggregation, hysteresis_low=low, hysteresis_high=high,
                  hysteresis_min_length=min_length, track_score_threshold=threshold, clip_length=max(frames_per_clip))
    tracker, tracks = run_package(clips, box_mode, caption_seed=seed, captions_per_video=num_captions, **common)
    _, single = run_package(clips, box_mode, caption_seed=seed, **common)
    assert [(t.slot, t.frames) for t in tracks] == [(t.slot, t.frames) for t in single] and tracks
    assert all(not t.caption_clips for t in tracks)
    frames = [clip["boxes"].shape[1] for clip in clips]
    _, _, _, _, scores = ref_track([dict(c, pred=c["boxes"]) for c in clips], k, t)
    torch.manual_seed(seed)
    expected = ref_part_captions(scores, frames, num_captions, max(frames_per_clip))
    parts_seen = set()
    for track in tracks:
        assert _per_frame_plan(track, sum(frames)) == expected[track.slot]
        parts_seen.update((start, end) for start, end, _, _ in track.part_captions)
    # (two parts: the last one captions only the first qualifying slot, often one that is not kept)
    assert len(parts_seen) >= (1 if num_captions == 2 else 2), "too few captioned parts: the case tests little"


def test_release_several_captions_per_video_by_hand():
    """Three slots, four one-frame clips, two parts (frames 0-1 and 2-3): in part 0 every slot is captioned from its
    best clip there (slot 1's best clip overall, 3, lies in part 1); in the last part only the first slot that
    qualifies (the release's loop breaks after it): slot 1, as slot 0 is below the caption threshold there."""
    s = torch.tensor([[0.9, 0.5, 0.2, 0.1],   # slot 0 (rows: slots, columns: clips)
                      [0.4, 0.6, 0.7, 0.95],  # slot 1
                      [0.8, 0.3, 0.6, 0.5]])  # slot 2
    tracker = CaptionFormerReleaseTracker(precision="native", captions_per_video=2, box_mode=True,
                                          presence_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0,
                                          hysteresis_min_length=1)
    for c in range(4):
        tracker.update(torch.eye(3), s[:, c], torch.zeros(3, 2), torch.ones(3), torch.rand(3, 1, 4),
                       frame_indices=[c])
    plans = {track.slot: track.part_captions for track in tracker.finalize()}
    assert plans == {0: [(0, 2, 0, 0)], 1: [(0, 2, 1, 0), (2, 4, 3, 0)], 2: [(0, 2, 0, 0)]}


def test_release_several_captions_per_video_end_to_end(toy_config):
    """Through the model and the processor: each frame of a trajectory carries the caption generated from the
    caption query of its part's planned (slot, clip) (the slot's query of that clip attending to that clip's frame
    through the slot's mask there, recomputed here from the reference tracking), the trajectory's caption is its
    first part's, frames of uncaptioned parts carry ""; the result is a valid video of the format. The LM is replaced
    by one that names which recomputed query it was given (an untrained LM writes the same words for every query)."""
    from captionformer_hf.modeling.captioning_captionformer import mask_logits_on_grid
    from captionformer_hf.modeling.video_level_captionformer import caption_head_outputs
    from captionformer_hf.processing import VideoGeometry
    from captionformer_hf.processing.trajectory_captionformer import validate_video
    from captionformer_hf.toy import TOY_WORDS, toy_processor

    clips = make_clips(3, num_clips=8, dim=32, frames_per_clip=(1,))  # the toy model's query width
    num_captions = 3
    config = toy_config(clip_length=1, video_inference_mode="release", k_match=2, t_match=5, hysteresis_low=0.3,
                        hysteresis_high=0.8, hysteresis_min_length=3, release_precision="native",
                        release_captions_per_video=num_captions)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    _inject_clip_outputs(model, clips)
    processor = toy_processor(clip_length=1)
    height = width = 32
    torch.manual_seed(0)
    pixels = torch.rand(len(clips), 3, height, width)
    # the release's plan and, for each planned (slot, clip, frame), its caption query
    _, _, out_pred, out_emb, scores = ref_track([dict(c, pred=c["masks"]) for c in clips], 2, 5)
    expected = ref_part_captions(scores, [1] * len(clips), num_captions, 1)
    planned = sorted({(slot, plan) for slot, frames in enumerate(expected) for plan in frames if plan is not None})
    head = model.model.caption_head
    with torch.no_grad():
        queries = [caption_head_outputs(head, [head.prepare_frames(pixels[c:c + 1])[0]], torch.tensor([0]),
                                        out_emb[c][slot][None],
                                        mask_logits_on_grid(out_pred[c][slot, f][None], head.grid_size), None, 1)[0]
                   for slot, (c, f) in planned]

    def naming_lm(caption_queries, *args, **kwargs):  # word 3 + i for the i-th planned query, then the end token
        rows = []
        for query in caption_queries:
            found = [i for i, q in enumerate(queries) if torch.allclose(query, q, atol=1e-5)]
            rows.append([3 + found[0] if len(found) == 1 else 0, 2])
        return torch.tensor(rows)

    model.generate_captions = naming_lm
    geometry = VideoGeometry((height, width), (height, width), (height, width))
    masks = {}
    out = model.track_video(pixels, caption=True,
                            on_clip_batch=lambda o: masks.update(processor.post_process_clip_masks(o, geometry)))
    result = processor.post_process_dense_captions(out, (height, width), (height, width), mask_rles=masks)
    validate_video(result, require_masks=True)
    captioned_frames = 0
    for trajectory in result["trajectories"]:
        slot = trajectory["track_id"]
        for entry in trajectory["frames"]:
            plan = expected[slot][entry["frame_index"]]
            word = "" if plan is None else TOY_WORDS[planned.index((slot, plan))]
            assert entry["caption"] == word
            captioned_frames += plan is not None
        firsts = [entry["caption"] for entry in trajectory["frames"] if entry["caption"]]
        assert trajectory["caption"] == (firsts[0] if firsts else "")
    parts = {(slot, plan) for slot, plan in planned if slot in out.track_ids.tolist()}
    assert captioned_frames and len(parts) >= 3, "too few captioned parts: the case tests little"
    assert len(out.part_caption_ids) == len(parts)  # one caption per part of a kept track


def test_the_overlay_labels_each_frame_with_its_own_caption_when_it_has_one():
    """Several captions per trajectory: the overlay writes a frame's caption; frames without one, the trajectory's."""
    from captionformer_hf.visualization import detections_by_frame

    prediction = {"trajectories": [{"track_id": 4, "caption": "a dog sitting", "category": "dog", "frames": [
        {"frame_index": 0, "box": [0, 0, 2, 2], "caption": "a dog sitting"},
        {"frame_index": 1, "box": [0, 0, 2, 2], "caption": "a dog running"},
        {"frame_index": 2, "box": [0, 0, 2, 2]}]}]}
    by_frame = detections_by_frame(prediction)
    assert [by_frame[f][0]["caption"] for f in range(3)] == ["a dog sitting", "a dog running", "a dog sitting"]
