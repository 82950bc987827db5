"""Choosing the prediction-set score and the out-of-distribution score by measurement, on one
trained run with held-out images (`fmnist train --holdout N`).

    python benchmarks/probes/trust_scores.py RUN_DIR [--holdout N] [--out rows.json]

For the run's model (with its flip TTA), on the held-out images it did not train on: fit the
temperature; then on the test set the coverage and mean size of split-conformal sets for each
set score at 90 % and 95 %, and for each OOD score the AUROC against each OOD set (drawn
pictures, scikit-learn's digits) with the threshold that passes 95 % of the held-out images.
Feature-space distance (Mahalanobis to the nearest class mean of the penultimate features,
Lee et al. 2018) is measured beside the probability scores.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from fmnist import datasets, ood, trust
from fmnist.checkpoint import load_model, normalization
from fmnist.inference import predict_logits, prepare_for_inference
from fmnist.train.data import Data, split_holdout


def features_and_logits(model, images, mean, std, tta):
    """(penultimate features, logits) with the same TTA as the logits."""
    captured = []
    hook = model.head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
    logits = predict_logits(model, torch.as_tensor(images), mean, std, tta_flip=tta)
    hook.remove()
    feats = torch.cat(captured)
    if tta:  # predict_logits ran the image then its mirror per batch: average the pairs
        per_batch = []
        i = 0
        for start in range(0, len(images), 1024):
            b = min(1024, len(images) - start)
            per_batch.append((feats[i : i + b] + feats[i + b : i + 2 * b]) / 2)
            i += 2 * b
        feats = torch.cat(per_batch)
    return feats.double().numpy(), logits.double().numpy()


def mahalanobis(train_feats, train_labels, feats, classes):
    means = np.stack([train_feats[train_labels == c].mean(0) for c in range(classes)])
    centred = train_feats - means[train_labels]
    cov = centred.T @ centred / len(centred) + 1e-6 * np.eye(centred.shape[1])
    prec = np.linalg.inv(cov)
    d = np.stack([np.einsum("nd,de,ne->n", feats - m, prec, feats - m) for m in means], 1)
    return d.min(1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--holdout", type=int, default=5000)
    p.add_argument("--out")
    args = p.parse_args()
    model, meta = load_model(args.run)
    model = prepare_for_inference(model)
    mean, std = normalization(meta)
    tta = bool(meta.get("tta_flip"))
    xs, ys = datasets.load_arrays("fashion-mnist", "train")
    xt, yt = datasets.load_arrays("fashion-mnist", "test")
    data = split_holdout(Data(torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(xt),
                              torch.from_numpy(yt), list(meta["classes"])), args.holdout)
    hx, hy = data.holdout_images.numpy(), data.holdout_labels.numpy()
    hf, hl = features_and_logits(model, hx, mean, std, tta)
    tf, tl = features_and_logits(model, xt, mean, std, tta)
    t = trust.fit_temperature(hl, hy)
    ph, pt = trust.softmax(hl, t), trust.softmax(tl, t)
    acc = float((tl.argmax(1) == yt).mean())
    out: dict = {"run": args.run, "temperature": t, "test_accuracy": acc, "sets": {}, "ood": {}}
    for score in trust.SET_SCORES:
        for level in (0.9, 0.95):
            q = trust.conformal_thresholds(ph, hy, score, [level])[0]
            mask = trust.set_mask(pt, score, q)
            out["sets"][f"{score}@{level}"] = {
                "coverage": float(mask[np.arange(len(yt)), yt].mean()),
                "mean_size": float(mask.sum(1).mean())}
    ood_sets = {k: ood.drawn(k, 300) for k in ood.DRAWN}
    ood_sets["digits"] = ood.digits()
    ood_fl = {k: features_and_logits(model, v, mean, std, tta) for k, v in ood_sets.items()}
    # feature distance needs class means from training images: the model's own training split
    sub = np.random.default_rng(0).choice(len(data.train_images), 10000, replace=False)
    trf, _ = features_and_logits(model, data.train_images.numpy()[sub], mean, std, tta)
    trl = data.train_labels.numpy()[sub]
    scorers = {
        "msp": lambda f, lg: trust.ood_scores(trust.softmax(lg, t), "msp"),
        "entropy": lambda f, lg: trust.ood_scores(trust.softmax(lg, t), "entropy"),
        "energy": lambda f, lg: -t * np.log(np.exp((lg - lg.max(1, keepdims=True)) / t).sum(1))
        - lg.max(1),
        "maxlogit": lambda f, lg: -lg.max(1),
        "mahalanobis": lambda f, lg: mahalanobis(trf, trl, f, len(meta["classes"])),
    }
    for name, fn in scorers.items():
        s_hold, s_test = fn(hf, hl), fn(tf, tl)
        thr = trust.ood_threshold(s_hold, 0.95)
        row = {"test_pass_rate": float((s_test <= thr).mean())}
        for k, (f, lg) in ood_fl.items():
            s = fn(f, lg)
            row[k] = {"auroc": trust.auroc(s_test, s), "not_recognised": float((s > thr).mean())}
        out["ood"][name] = row
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
