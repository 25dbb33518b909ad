"""What the tokens carry: recognise the sign of a sequence from its tokens, on signers never trained on.

One classifier (multinomial logistic regression on standardised features) is trained on the
sequences of the training signers and scored on the others, for several views of the same
sequences: the tokens (a bag of codes per stream and level), the unquantised pose it was
made from (the upper bound), the pose decoded from the tokens read by the pose's own features
(the same classifier on what the tokens carry, whatever their ids), the tokens with the
training labels shuffled (what a classifier learns from nothing) and the majority class. A
token set that carries the sign scores near the pose; one that carries only the chunk's mean
pose or the signer scores near the controls.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from src.data import keypoints as kp
from src.data.dataset import PoseDataset
from src.inference import Tokenized, tokenize


@dataclass
class Probe:
    """Accuracy of one view on each scored split, with the number of sequences."""

    view: str
    accuracy: dict[str, float]
    n: dict[str, int]


def token_features(tok: Tokenized, codebook_size: int) -> np.ndarray:
    """A sequence's codes as a bag: per stream and code position, the share of chunks with each code
    (S x codes per stream x K values; positions a stream does not code stay 0)."""
    codes = tok.codes                                   # (C, S, J)
    chunks, streams, positions = codes.shape
    out = np.zeros((streams, positions, codebook_size), np.float32)
    s_idx, j_idx = np.meshgrid(np.arange(streams), np.arange(positions), indexing="ij")
    for c in range(chunks):
        valid = codes[c] >= 0
        np.add.at(out, (s_idx[valid], j_idx[valid], codes[c][valid]), 1.0 / chunks)
    return out.reshape(-1)


def pose_features(tok: Tokenized, decoded: bool = False) -> np.ndarray:
    """The unquantised pose as the model saw it (local units, every stream), or with ``decoded``
    the pose decoded from its tokens: per point the mean and spread over the frames where the
    point was observed, and the mean speed between consecutive frames that both observe it
    (0 where none do): what a view puts at unobserved points never counts."""
    x = (tok.recon if decoded else tok.sample["x"]).reshape(-1, kp.NUM_STREAM_POINTS, 2)   # (T, P, 2)
    seen = tok.sample["conf"].reshape(-1, kp.NUM_STREAM_POINTS)[..., None].astype(np.float32)
    frames = tok.sample["frame_mask"].reshape(-1).astype(bool)
    x, seen = x[frames], seen[frames]
    count = np.maximum(seen.sum(0), 1.0)
    mean = (x * seen).sum(0) / count
    spread = np.sqrt((((x - mean) ** 2) * seen).sum(0) / count)
    pairs = seen[1:] * seen[:-1]
    speed = (np.abs(np.diff(x, axis=0)) * pairs).sum(0) / np.maximum(pairs.sum(0), 1.0)
    return np.concatenate([mean.reshape(-1), spread.reshape(-1), speed.reshape(-1)]).astype(np.float32)


def split_views(model, cfg, split: str, label: str, classes: list[str] | None = None, batch_size: int = 16,
                unseen: list[str] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """The views of one split's sequences (``tokens``, ``pose``: (N, F) each), their labels as class
    indices, and the classes (the split's own, sorted, when ``classes`` is None). A sequence whose
    label is not among ``classes`` is left out and its name added to ``unseen``."""
    data = dataclasses.replace(cfg.data, max_frames=0)
    dataset = PoseDataset(data, split)
    names = list(dataset.names)
    values = [str(dataset.annotations[n].get(label, "")) for n in names]
    classes = sorted(set(values) - {""}) if classes is None else classes
    keep = [i for i, v in enumerate(values) if v in classes]
    if unseen is not None:
        unseen += [names[i] for i, v in enumerate(values) if v not in classes]
    views: dict[str, list[np.ndarray]] = {"tokens": [], "pose": [], "tokens, decoded": []}
    for start in range(0, len(keep), batch_size):
        samples = [{"name": names[i], **dataset[i]} for i in keep[start:start + batch_size]]
        for tok in tokenize(model, samples):
            views["tokens"].append(token_features(tok, cfg.model.rvq.codebook_size))
            views["pose"].append(pose_features(tok))
            views["tokens, decoded"].append(pose_features(tok, decoded=True))
    labels = np.array([classes.index(values[i]) for i in keep], np.int64)
    return {v: np.stack(f) for v, f in views.items()}, labels, classes


def fit_classifier(features: np.ndarray, labels: np.ndarray, classes: int, weight_decay: float = 1e-3,
                   steps: int = 300) -> tuple[torch.nn.Linear, np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L-BFGS, L2) on features standardised by the training set;
    returns the layer and the standardisation (mean, std)."""
    torch.manual_seed(0)
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = torch.from_numpy((features - mean) / std)
    y = torch.from_numpy(labels).long()
    layer = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(layer.parameters(), lr=0.5, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(x), y) + weight_decay * layer.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return layer, mean, std


def accuracy(layer: torch.nn.Linear, mean: np.ndarray, std: np.ndarray, features: np.ndarray,
             labels: np.ndarray) -> float:
    with torch.no_grad():
        pred = layer(torch.from_numpy((features - mean) / std)).argmax(1).numpy()
    return float((pred == labels).mean())


def probe(train: dict[str, np.ndarray], scored: dict[str, dict[str, np.ndarray]], train_labels: np.ndarray,
          scored_labels: dict[str, np.ndarray], classes: int, seed: int = 0) -> list[Probe]:
    """Each view of ``train`` (name -> features (N, F)) trained and scored on every split of ``scored``
    (split -> name -> features); plus shuffled training labels on the first view and the majority class."""
    out = []
    for view, features in train.items():
        layer, mean, std = fit_classifier(features, train_labels, classes)
        out.append(Probe(view, {s: accuracy(layer, mean, std, v[view], scored_labels[s]) for s, v in scored.items()},
                         {s: len(scored_labels[s]) for s in scored}))
    first = next(iter(train))
    shuffled = np.random.default_rng(seed).permutation(train_labels)
    layer, mean, std = fit_classifier(train[first], shuffled, classes)
    out.append(Probe(f"{first}, shuffled labels",
                     {s: accuracy(layer, mean, std, v[first], scored_labels[s]) for s, v in scored.items()},
                     {s: len(scored_labels[s]) for s in scored}))
    majority = np.bincount(train_labels, minlength=classes).argmax()
    out.append(Probe("majority class", {s: float((scored_labels[s] == majority).mean()) for s in scored},
                     {s: len(scored_labels[s]) for s in scored}))
    return out
