"""Every RLE string or dict, however hostile, is answered or refused within a time bound: validation, decoding, mask
IoU and CHOTA never hang, crash or overflow (the bounded codec of the trajectory format sees every string before
pycocotools does). Thousands of seeded random and adversarial inputs run in a subprocess under a deadline, so that
a hang fails the test instead of freezing the suite."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from captionformer_hf.processing.trajectory_captionformer import check_rle, rle_decode, rle_encode, rle_runs


def encode_values(values) -> str:
    """pycocotools' character code of raw values (no delta coding): 5 bits a character, continuation bit 0x20."""
    out = []
    for value in values:
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = (value != -1) if chunk & 0x10 else (value != 0)
            out.append(chr(chunk + 48 + (0x20 if more else 0)))
    return "".join(out)


def test_the_overflow_string_of_the_report_is_refused_quickly():
    # runs of 2^62 that wrap to exactly height x width in int64 (pycocotools then loops forever): refused, not summed
    wrapping = encode_values([0, 2**62, 2**62, 2**62, 2**62 + 100])
    assert len(wrapping) < 70
    with pytest.raises(ValueError, match="value too large to be a run length"):
        check_rle(wrapping, 10, 10)
    with pytest.raises(ValueError, match="value too large"):
        rle_decode(wrapping, 10, 10)
    # the largest values a short string can hold are refused by their size, not by a sum
    with pytest.raises(ValueError, match=f"run of {2**33} pixels, more than 100"):
        check_rle(encode_values([0, 2**33]), 10, 10)
    with pytest.raises(ValueError, match="more than 2147483647"):
        check_rle("0", 2**16, 2**16)
    assert rle_runs(encode_values([0, 5, 95])).tolist() == [0, 5, 95]


def test_valid_strings_still_round_trip_byte_for_byte_with_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 40, 2)
        mask = rng.random((h, w)) < rng.random()
        ours = rle_encode(mask)
        theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        assert ours == theirs
        check_rle(ours, int(h), int(w))
        assert np.array_equal(rle_decode(ours, int(h), int(w)), mask)


FUZZ = '''
import random, signal, sys, time
import numpy as np
from captionformer_hf.processing.trajectory_captionformer import check_rle, rle_decode
from captionformer_hf.metrics import compute_chota

rng = random.Random(SEED)
code = [chr(c) for c in range(48, 112)]


def value_chars(value):
    out = []
    more = True
    while more:
        chunk = value & 0x1F
        value >>= 5
        more = (value != -1) if chunk & 0x10 else (value != 0)
        out.append(chr(chunk + 48 + (0x20 if more else 0)))
    return "".join(out)


def adversarial():
    kind = rng.randrange(9)
    if kind == 0:  # random characters of the code
        return "".join(rng.choice(code) for _ in range(rng.randrange(0, 40)))
    if kind == 1:  # any bytes / characters
        return "".join(chr(rng.randrange(0, 300)) for _ in range(rng.randrange(0, 20)))
    if kind == 2:  # huge values, positive or negative, that may wrap
        return "".join(value_chars(rng.choice([1, -1]) * rng.randrange(0, 2**rng.randrange(1, 70))) for _ in range(rng.randrange(1, 8)))
    if kind == 3:  # values summing (wrapping) to the frame size
        big = 2**62
        return value_chars(0) + value_chars(big) + value_chars(big) + value_chars(-big) + value_chars(100 - big)
    if kind == 4:  # long continuation chains
        return chr(48 + 0x20) * rng.randrange(1, 200) + "0"
    if kind == 5:  # a valid mask's string, corrupted
        mask = np.random.default_rng(rng.randrange(10**6)).random((10, 10)) < 0.5
        from captionformer_hf.processing.trajectory_captionformer import rle_encode
        s = list(rle_encode(mask))
        for _ in range(rng.randrange(1, 4)):
            if s:
                s[rng.randrange(len(s))] = rng.choice(code)
        return "".join(s)
    if kind == 6:  # many tiny runs
        return "1" * rng.randrange(0, 500)
    if kind == 7:  # uncompressed counts (dict form)
        return {"counts": [rng.randrange(-5, 2**rng.randrange(1, 66)) for _ in range(rng.randrange(0, 6))],
                "size": [10, 10]}
    return {"counts": "".join(rng.choice(code) for _ in range(rng.randrange(0, 20))),  # dict with a weird size
            "size": rng.choice([[10, 10], [0, 10], [2**40, 2**40], ["a", 3], [10], [-1, 5], [3.5, 2]])}


outcomes = {"answered": 0, "refused": 0}
start = time.monotonic()
for i in range(COUNT):
    value = adversarial()
    begin = time.monotonic()
    try:
        if isinstance(value, str):
            check_rle(value, 10, 10)
            rle_decode(value, 10, 10)
        truth = {"video_id": "v", "num_frames": 1, "height": 10, "width": 10, "trajectories": [
            {"track_id": 1, "caption": "a", "frames": [{"frame_index": 0, "box": [0, 0, 5, 5], "mask_rle": value}]}]}
        pred = {"video_id": "v", "num_frames": 1, "height": 10, "width": 10, "trajectories": [
            {"track_id": 1, "score": 1.0, "caption": "a", "frames": [
                {"frame_index": 0, "box": [0, 0, 5, 5], "mask_rle": value}]}]}
        compute_chota([pred], [truth], iou_type="mask", caption_metrics=("cider",))
        outcomes["answered"] += 1
    except (ValueError, TypeError):
        outcomes["refused"] += 1
    if time.monotonic() - begin > 2.0:
        raise SystemExit(f"input {i} took {time.monotonic() - begin:.1f} s: {value!r}")
print("OUTCOMES", outcomes["answered"], outcomes["refused"], round(time.monotonic() - start, 1))
'''


@pytest.mark.parametrize("seed", [0, 1])
def test_thousands_of_hostile_rle_inputs_are_answered_or_refused_in_time(seed):
    script = FUZZ.replace("SEED", str(seed)).replace("COUNT", "1500")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-1000:]
    answered, refused, seconds = out.stdout.split("OUTCOMES")[1].split()
    assert int(answered) + int(refused) == 1500
    assert int(answered) > 0 and int(refused) > 0  # both kinds occur: valid masks are answered, the rest refused
