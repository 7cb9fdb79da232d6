"""DVOC datasets: schema, converters from official formats, synthetic generator, clip loader."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from captionformer_hf.cli import main
from captionformer_hf.data.converters import convert
from captionformer_hf.data.schema import load_parquet_dataset, validate_example
from captionformer_hf.data.synthetic import COLORS, SyntheticVideoConfig, build_synthetic_dataset, generate_video
from captionformer_hf.toy import toy_processor

H, W = 24, 32


def rle(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def square(x, y, size=6):
    mask = np.zeros((H, W), np.uint8)
    mask[y : y + size, x : x + size] = 1
    return mask


def write_frames(folder, names):
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 10 * i, np.uint8)).save(path)


@pytest.fixture
def lvvis_fixture(tmp_path):
    names = [f"v1/{i:05d}.jpg" for i in range(3)]
    write_frames(tmp_path / "frames", names)
    annotations = {
        "videos": [{"id": 1, "file_names": names, "height": H, "width": W, "length": 3}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 11, "video_id": 1, "category_id": 7, "caption": "a dog running to the right",
             "segmentations": [{"size": [H, W], "counts": rle(square(2 + 3 * i, 4))} for i in range(2)] + [None],
             "bboxes": None},
            {"id": 12, "video_id": 1, "category_id": 3, "caption": "a cat sleeping",
             "segmentations": [None, {"size": [H, W], "counts": mask_utils.encode(np.asfortranarray(square(20, 10)))["counts"].decode()}, None],
             "bboxes": [None, [20, 10, 6, 6], None]},
        ],
    }
    path = tmp_path / "lvvis.json"
    path.write_text(json.dumps(annotations))
    return path, tmp_path / "frames", annotations


def test_lvvis_round_trip(lvvis_fixture, tmp_path):
    path, frames, _ = lvvis_fixture
    result = convert("lvvis", {"train": (str(path), str(frames))}, out=str(tmp_path / "out"))
    example = result["train"][0]
    assert example["num_frames"] == 3 and (example["height"], example["width"]) == (H, W)
    dog, cat = example["trajectories"]
    assert dog["category"] == "dog" and dog["category_id"] == 1 and cat["category_id"] == 0  # contiguous by id
    assert [f["frame_index"] for f in dog["frames"]] == [0, 1]
    assert dog["frames"][1]["box"] == [5.0, 4.0, 6.0, 6.0]  # from the mask
    decoded = mask_utils.decode({"size": [H, W], "counts": dog["frames"][1]["mask_rle"].encode()})
    assert np.array_equal(decoded, square(5, 4))
    assert cat["caption"] == "a cat sleeping" and [f["frame_index"] for f in cat["frames"]] == [1]
    assert len(example["video"]) == 3 and example["video"][2]["bytes"]
    # parquet written atomically, with a card, loadable (also streaming)
    loaded = load_parquet_dataset(str(tmp_path / "out"))
    assert loaded["train"][0]["trajectories"] == example["trajectories"]
    assert "LV-VISCap" in (tmp_path / "out" / "README.md").read_text()
    streamed = next(iter(load_parquet_dataset(str(tmp_path / "out"), streaming=True)["train"]))
    assert streamed["video_id"] == "1"


def test_a_dataset_written_with_the_old_tracks_column_loads_as_trajectories(lvvis_fixture, tmp_path):
    """Datasets written before the rename name the column `tracks`: loading renames it (map-style and streaming)."""
    import datasets

    from captionformer_hf.data.schema import write_parquet_shards

    path, frames, _ = lvvis_fixture
    result = convert("lvvis", {"train": (str(path), str(frames))}, out=str(tmp_path / "new"))
    old = datasets.DatasetDict({"train": result["train"].rename_column("trajectories", "tracks")})
    write_parquet_shards(old, str(tmp_path / "old"))
    loaded = load_parquet_dataset(str(tmp_path / "old"))
    assert "tracks" not in loaded["train"].column_names
    assert loaded["train"][0]["trajectories"] == result["train"][0]["trajectories"]
    streamed = next(iter(load_parquet_dataset(str(tmp_path / "old"), streaming=True)["train"]))
    assert streamed["trajectories"] == result["train"][0]["trajectories"]


def test_lvvis_errors_name_the_annotation(lvvis_fixture, tmp_path):
    path, frames, annotations = lvvis_fixture
    bad = json.loads(json.dumps(annotations))
    bad["annotations"][0]["segmentations"][0] = {"size": [H, W], "counts": "!!!not-rle"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="annotation 11"):
        convert("lvvis", {"train": (str(tmp_path / "bad.json"), str(frames))})
    bad = json.loads(json.dumps(annotations))
    bad["annotations"][1]["bboxes"] = [None, None, None, [0, 0, 1, 1]]
    (tmp_path / "bad2.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="annotation 12: 4 frames"):
        convert("lvvis", {"train": (str(tmp_path / "bad2.json"), str(frames))})
    with pytest.raises(ValueError, match="frame file not found"):
        convert("lvvis", {"train": (str(path), str(tmp_path / "nowhere"))})
    with pytest.raises(ValueError, match="annotation file not found"):
        convert("lvvis", {"train": (str(tmp_path / "missing.json"), str(frames))})
    # nothing half-written: a failed conversion leaves no output folder
    with pytest.raises(ValueError):
        convert("lvvis", {"train": (str(tmp_path / "bad.json"), str(frames))}, out=str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_lvis_round_trip(tmp_path):
    write_frames(tmp_path / "images", ["img1.jpg"])
    annotations = {
        "images": [{"id": 5, "file_name": "img1.jpg", "height": H, "width": W}],
        "categories": [{"id": 2, "name": "cup"}],
        "annotations": [{"id": 9, "image_id": 5, "category_id": 2, "bbox": [2, 3, 10, 8],
                         "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]], "caption": "a white cup on a table"}],
    }
    (tmp_path / "lvis.json").write_text(json.dumps(annotations))
    example = convert("lvis", {"train": (str(tmp_path / "lvis.json"), str(tmp_path / "images"))})["train"][0]
    assert example["num_frames"] == 1 and len(example["video"]) == 1
    track = example["trajectories"][0]
    assert track["caption"] == "a white cup on a table" and track["category"] == "cup"
    mask = mask_utils.decode({"size": [H, W], "counts": track["frames"][0]["mask_rle"].encode()})
    assert mask[5:10, 4:10].all() and not mask[15:, 20:].any()


@pytest.mark.parametrize("fmt", ["vidstg", "vln", "bensmot"])
def test_coco_frames_round_trip(tmp_path, fmt):
    write_frames(tmp_path / "frames", ["a/0.jpg", "a/1.jpg", "a/2.jpg"])
    annotations = {
        "images": [{"id": 30 + i, "video_id": 4, "file_name": f"a/{i}.jpg", "height": H, "width": W} for i in (2, 0, 1)],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": 100 + i, "image_id": 30 + i, "bbox": [i, i, 5, 5], "track_id": 8, "category_id": 1,
             "caption": "a man walking" if i < 2 else "a man"} for i in range(3)
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(annotations))
    example = convert(fmt, {"test": (str(tmp_path / "gt.json"), str(tmp_path / "frames"))})["test"][0]
    assert example["num_frames"] == 3
    (track,) = example["trajectories"]
    assert track["caption"] == "a man walking"  # the most frequent per-frame caption
    assert [f["box"][0] for f in track["frames"]] == [0.0, 1.0, 2.0]  # frame order = image id order
    annotations["annotations"][0]["image_id"] = 999
    (tmp_path / "bad.json").write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match="annotation 100"):
        convert(fmt, {"test": (str(tmp_path / "bad.json"), str(tmp_path / "frames"))})


def test_schema_validation():
    example = {"video_id": "v", "height": 10, "width": 10, "num_frames": 2, "trajectories": [
        {"track_id": 1, "caption": "x", "frames": [{"frame_index": 0, "box": [0, 0, 2, 2], "mask_rle": None}]}]}
    validate_example(example)
    bad = json.loads(json.dumps(example))
    bad["trajectories"][0]["frames"][0]["frame_index"] = 2
    with pytest.raises(ValueError, match="out of range"):
        validate_example(bad)
    bad = json.loads(json.dumps(example))
    bad["trajectories"][0]["frames"][0]["box"] = [0, 0, -1, 2]
    with pytest.raises(ValueError, match="negative"):
        validate_example(bad)
    bad = json.loads(json.dumps(example))
    bad["trajectories"][0]["frames"][0]["mask_rle"] = rle(np.ones((5, 5)))  # 25 pixels for a 10x10 frame
    with pytest.raises(ValueError, match="bad mask RLE"):
        validate_example(bad)
    bad = json.loads(json.dumps(example))
    bad["trajectories"].append(bad["trajectories"][0])
    with pytest.raises(ValueError, match="duplicate track_id"):
        validate_example(bad)


# ---------------------------------------------------------------------------------------------------- synthetic
def test_generator_is_deterministic_and_seeds_differ():
    a, b, c = generate_video(11), generate_video(11), generate_video(12)
    assert np.array_equal(a["frames"], b["frames"])
    assert [t["caption"] for t in a["trajectories"]] == [t["caption"] for t in b["trajectories"]]
    assert not np.array_equal(a["frames"], c["frames"])


@pytest.mark.parametrize("seed", range(8))
def test_generator_labels_agree_with_the_pixels(seed):
    video = generate_video(seed, SyntheticVideoConfig(num_frames=16))
    for track in video["trajectories"]:
        color = np.array(COLORS[track["color"]])
        assert track["caption"].split()[1:3] == [track["color"], track["category"]]
        for frame in track["frames"]:
            mask = frame["mask"]
            ys, xs = np.nonzero(mask)
            assert frame["box"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            pixels = video["frames"][frame["frame_index"]][mask].astype(float)
            # shading scales the colour by 0.85..1: every visible pixel is the object's colour, not background
            ratio = pixels / np.maximum(color, 1)
            bright = color > 100
            assert np.all((ratio[:, bright] > 0.8) & (ratio[:, bright] < 1.05))


def test_generator_motions_and_occlusion():
    found_reappearance = False
    for seed in range(40):
        video = generate_video(seed)
        for track in video["trajectories"]:
            indices = [f["frame_index"] for f in track["frames"]]
            if len(indices) > 1 and max(np.diff(indices)) > 1:
                found_reappearance = True
            centres = [f["box"][0] + f["box"][2] / 2 for f in track["frames"]]
            if track["motion"] == "right" and len(centres) > 5 and all(f["box"][2] > 10 for f in track["frames"]):
                assert centres[-1] > centres[0]
    assert found_reappearance  # occluders make objects disappear and come back


def test_synthetic_dataset_splits_and_cli(tmp_path):
    dataset = build_synthetic_dataset(10, seed=3)
    assert {k: len(v) for k, v in dataset.items()} == {"train": 8, "validation": 1, "test": 1}
    again = build_synthetic_dataset(10, seed=3)
    assert dataset["test"][0]["trajectories"] == again["test"][0]["trajectories"]
    other = build_synthetic_dataset(10, seed=4)
    assert dataset["train"][0]["video_id"] != other["train"][0]["video_id"]
    for example in dataset["train"]:
        validate_example(example)
    assert main(["data", "synthetic", "--num-videos", "5", "--out", str(tmp_path / "syn"), "--seed", "1", "-q"]) == 0
    loaded = load_parquet_dataset(str(tmp_path / "syn"))
    assert sum(len(v) for v in loaded.values()) == 5
    assert len(list((tmp_path / "syn" / "videos").rglob("*.mp4"))) == 5


def test_cli_push_embeds_files(tmp_path, monkeypatch):
    import datasets

    main(["data", "synthetic", "--num-videos", "3", "--out", str(tmp_path / "syn"), "-q"])
    calls = {}

    def fake_push(self, repo_id, **kwargs):
        calls.update(repo_id=repo_id, **kwargs)

    uploaded = {}
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", fake_push)
    import huggingface_hub

    # the card push_to_hub writes on the Hub: its dataset_info and configs must survive our card
    hub_card = tmp_path / "hub-README.md"
    hub_card.write_text("---\ndataset_info:\n  splits:\n  - name: train\n    num_examples: 2\nconfigs:\n"
                        "- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, repo_type: str(hub_card))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", lambda self, **kw: uploaded.update(kw))
    assert main(["data", "push", str(tmp_path / "syn"), "--repo-id", "me/shapes"]) == 0
    assert calls == {"repo_id": "me/shapes", "private": False, "embed_external_files": True}
    assert uploaded["path_in_repo"] == "README.md" and uploaded["repo_type"] == "dataset"
    card = huggingface_hub.DatasetCard(uploaded["path_or_fileobj"].decode())
    assert card.data.dataset_info == {"splits": [{"name": "train", "num_examples": 2}]}
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert card.data.license == "cc0-1.0" and card.data.pretty_name == "Synthetic DVOC shapes"
    assert card.data.size_categories == ["n<1K"] and "# Synthetic DVOC shapes" in card.text


def test_dataset_cards_carry_the_hub_metadata():
    import huggingface_hub

    from captionformer_hf.data.schema import dataset_card, dvoc_features, size_category

    card = huggingface_hub.DatasetCard(dataset_card("LV-VISCap", "text", {"train": 3000, "validation": 837},
                                                     dvoc_features("frames")))
    assert card.data.license == "other" and "licenses of the source annotations and frames apply" in card.text
    assert card.data.size_categories == ["1K<n<10K"] and card.data.pretty_name == "LV-VISCap"
    assert [c["split"] for c in card.data.configs[0]["data_files"]] == ["train", "validation"]
    assert [size_category(n) for n in (0, 999, 1000, 99_999, 100_000, 5_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M"]


