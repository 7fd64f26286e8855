"""Calibrate the side-of-focus logit of a sign-magnitude DPN on a calibration patch bank.

The DPN's side logit ``b`` can come out of training biased towards one side (the
bundled run: right on 95–100 % of above-focus patches beyond 3 µm but 62–75 % of
below-focus ones). This adds the constant to ``b``'s bias that maximises the
*balanced* side accuracy (mean of the two sides' accuracies) over patches with
|defocus| ≥ 1 µm of a bank rendered from the *train* split with a seed of its own
(never the test split), and writes the model with the new bias and a record of it.

Run: ``.venv/bin/python scripts/calibrate-side.py runs/dpnS/dpn.json runs/scalbank OUT_STEM``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_sparsefocus.core.nn._bank import PatchBank
from napari_sparsefocus.core.nn._data import images_to_tensor
from napari_sparsefocus.core.nn._evaluate import _load_single
from napari_sparsefocus.core.nn._model_io import load_model_file, save_model_file


def main() -> None:
    model_path, bank_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(2)
    net, _, name = _load_single(model_path)
    if name != "dpn" or not net.config.sign_magnitude_head:
        raise SystemExit("needs a DPN model file with sign_magnitude_head")
    bank = PatchBank(bank_path)
    if bank.meta["split"] != "train":
        raise SystemExit("calibrate on a train-split bank, never on test data")
    logits, truth = [], []
    with torch.no_grad():
        for s in range(0, len(bank), 32):
            idx = np.arange(s, min(len(bank), s + 32))
            a, b = bank.pairs(idx)
            for shots, d in ((a, bank.defocus_um[idx]), (b, bank.defocus_um[idx] + bank.delta_um)):
                net(images_to_tensor(shots))
                logits.append(net.last_head_parts[1].numpy())
                truth.append(d)
    b_logit, d = np.concatenate(logits), np.concatenate(truth)
    keep = np.abs(d) >= 1.0
    b_logit, side = b_logit[keep], d[keep] > 0

    def balanced(offset: float) -> float:
        pred = (b_logit + offset) > 0
        return 0.5 * (np.mean(pred[side]) + np.mean(~pred[~side]))

    offsets = np.round(np.arange(-3.0, 3.001, 0.05), 3)
    scores = np.array([balanced(o) for o in offsets])
    best = float(offsets[np.argmax(scores)])
    print(
        f"{keep.sum()} patches; balanced side accuracy {balanced(0.0):.3f} -> {scores.max():.3f} "
        f"with offset {best:+.2f}"
    )
    tensors, mcfg = load_model_file(model_path)
    key = "dpn.fc.bias"
    bias = tensors[key].clone()
    bias[1] += best
    tensors[key] = bias
    mcfg = json.loads(json.dumps(mcfg))
    mcfg.setdefault("training", {})["side_calibration"] = {
        "offset": best,
        "balanced_accuracy_before": balanced(0.0),
        "balanced_accuracy_after": float(scores.max()),
        "bank": str(Path(bank_path)),
        "bank_seed": bank.meta["seed"],
        "bank_split": bank.meta["split"],
        "patches": int(keep.sum()),
        "command": "python scripts/calibrate-side.py " + " ".join(sys.argv[1:]),
    }
    print("wrote", save_model_file(out, tensors, mcfg))


if __name__ == "__main__":
    main()
