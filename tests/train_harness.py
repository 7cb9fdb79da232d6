"""Test harness: `python train_harness.py CONFIG_JSON OUT_DIR` trains with the given TrainingConfig values and, as
callbacks (not trainer options), writes each process's parameter fingerprint and learning-rate sequence."""

import json
import os
import sys

from captionformer_hf.training import TrainingConfig, state_fingerprint, train


def main():
    values, out = json.loads(sys.argv[1]), sys.argv[2]
    lrs = []

    def record(event, state):
        if event == "step_end":
            lrs.append(state["logs"].get("lr"))
        if event == "train_end":
            rank = state["accelerator"].process_index
            with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
                json.dump({"fingerprint": state_fingerprint(state["model"], parameters_only=True), "lr": lrs,
                           "processes": state["accelerator"].num_processes}, f)

    os.makedirs(out, exist_ok=True)
    train(TrainingConfig(**values), callbacks=[record])


if __name__ == "__main__":
    main()
