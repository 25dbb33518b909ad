"""The CSL-Daily pose dataset: raw arrays -> normalised, chunked samples -> padded batches."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from src.config import DataConfig
from src.data.pose import denormalise, flat_values, frame_unit, rotate
from src.data.sample import make_sample
from src.data.source import DataError, PoseSource, SkipReport, read_json, scan_split, split_names

log = logging.getLogger(__name__)


def truth_in_input_frame(truth: dict, sample: dict) -> dict[str, np.ndarray]:
    """The ground truth of a sample whose input was perturbed (e.g. jittered), in the input's
    local frame: ``x_true`` (C, L, P, 2) and ``conf_true`` (C, L, P).

    The model codes the input relative to the input's centres, unit, roll and reference, so the
    truth is mapped to pixels with its own frame and back with the input's; points count where both
    were observed. Both samples must cover the same frames (no crop, no augmentation).
    """
    if truth["x"].shape != sample["x"].shape:
        raise DataError(f"truth and input differ in shape: {truth['x'].shape} vs {sample['x'].shape}")
    flat = (-1,) + truth["x"].shape[2:]
    centres_in = sample["centres"].reshape(-1, *sample["centres"].shape[2:])
    local = truth["x"] + truth["reference"][:, None]
    pixels = denormalise(local.reshape(flat), truth["centres"].reshape(centres_in.shape),
                         flat_values(truth["unit"]))
    # from the truth's upright picture to the input's (each turned by its own roll angle)
    angle = flat_values(truth["angle"]) - flat_values(sample["angle"])
    pixels = rotate(pixels, angle, tuple(float(v) for v in sample["size"]))
    origin = denormalise(np.zeros_like(pixels), centres_in, 1.0)  # each point's input centre
    x_true = (pixels - origin) / frame_unit(flat_values(sample["unit"]))
    x_true = x_true.astype(np.float32).reshape(sample["x"].shape) - sample["reference"][:, None]
    return {"x_true": x_true, "conf_true": truth["conf"] & sample["conf"]}


RawTransform = Callable[[np.ndarray, str], np.ndarray]  # (raw [T, 134, 3], name) -> raw


class _TransformedSource:
    """A pose source whose arrays pass through a raw transform (what the scan must judge)."""

    def __init__(self, source: PoseSource, transform: RawTransform):
        self.source, self.transform = source, transform

    def has(self, name: str) -> bool:
        return self.source.has(name)

    def load(self, name: str) -> np.ndarray:
        return self.transform(self.source.load(name), name)


def require_root(root: str | Path) -> Path:
    """``root`` as a Path; a DataError saying where it was looked for and how to point at it when missing."""
    root = Path(root)
    if root.is_dir():
        return root
    where = "" if root.is_absolute() else f" (relative to the working directory: {Path.cwd() / root})"
    link = f"; or link it there: ln -s <folder> {root}" if not root.is_absolute() and len(root.parts) == 1 else ""
    raise DataError(f"data root not found: {root}{where}; pass --root <folder> (or data.root=<folder>){link}; "
                    "`python run.py data-synth --out DIR` makes a synthetic one")


class PoseDataset(Dataset):
    """One split of a CSL-Daily-layout root. Unusable names are skipped, counted and logged once.

    ``raw_transform(raw, name)`` changes each loaded array before preprocessing (the
    controlled shifts of :mod:`src.metrics.shifts`); ``truth_transform`` gives, when the
    input is perturbed beyond its truth (noise), the array the metrics score against
    (``x_true``/``conf_true`` in the batch). Both must be deterministic per name.
    """

    def __init__(self, cfg: DataConfig, split: str, train: bool = False, seed: int = 0,
                 names: list[str] | None = None, progress: bool = False,
                 raw_transform: RawTransform | None = None, truth_transform: RawTransform | None = None):
        self.cfg, self.split, self.train, self.seed, self.epoch = cfg, split, train, seed, 0
        if truth_transform is not None and (train or raw_transform is None):
            raise ValueError("truth_transform needs a raw_transform and an evaluation dataset (train=False)")
        self.raw_transform, self.truth_transform = raw_transform, truth_transform
        root = require_root(cfg.root)
        self.source = PoseSource(root, cfg.pose_dir, cfg.pack_dir)
        annotations = read_json(root / cfg.annotation_file, "annotation file")
        listed = names if names is not None else split_names(root, cfg.split_file, split)
        if split == "train" and names is None and cfg.train_fraction < 1:
            keep = np.random.default_rng(0).permutation(len(listed))[:max(1, round(cfg.train_fraction * len(listed)))]
            listed = [listed[i] for i in sorted(keep)]
        scanned = self.source if raw_transform is None else _TransformedSource(self.source, raw_transform)
        self.lengths, self.report = scan_split(scanned, annotations, listed, cfg.conf_thresh,
                                               cfg.min_frames, cfg.min_valid_frac, progress)
        self.names = list(self.lengths)
        log.info("%s split '%s': %s", root, split, self.report.summary())
        if not listed:
            raise DataError(f"{root}: split '{split}' has no usable sequence: {cfg.split_file} lists none "
                            "for it (pick another split)")
        if not self.names:
            raise DataError(f"{root}: split '{split}' has no usable sequence ({self.report.summary()})")
        self.annotations = {n: annotations[n] for n in self.names}

    def set_epoch(self, epoch: int) -> None:
        """Augmentations depend on (seed, epoch, index) only, so resumes and workers agree."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, draw: int | None = None) -> dict:
        """Sequence ``index``; its augmentations are drawn from (seed, epoch, ``draw``, default the index)."""
        name = self.names[index]
        rng = np.random.default_rng([self.seed, self.epoch, index if draw is None else draw]) if self.train else None
        raw = self.source.load(name)
        try:
            if self.raw_transform is None:
                return {"name": name, **make_sample(raw, self.cfg, rng)}
            sample = make_sample(self.raw_transform(raw, name), self.cfg, rng)
            if self.truth_transform is not None:
                sample.update(truth_in_input_frame(make_sample(self.truth_transform(raw, name), self.cfg), sample))
        except (DataError, ValueError) as e:
            raise DataError(f"{name}: {e}") from None
        return {"name": name, **sample}


class RootsDataset(Dataset):
    """One split of several roots (``data.roots``: {folder: weight}), read as one dataset.

    Names are ``<root folder name>/<name>``, interleaved root by root (the first N names, as the
    statistics read, cover every root). For training, an epoch draws each sequence of a root
    ``weight`` times on average: the whole part ``floor(weight)`` times, and a seeded share of
    it for the fraction, drawn anew each epoch.
    """

    def __init__(self, cfg: DataConfig, split: str, train: bool = False, seed: int = 0, progress: bool = False):
        self.cfg, self.split, self.train, self.seed = cfg, split, train, seed
        self.parts = {Path(root).name: (PoseDataset(dataclasses.replace(cfg, root=root, roots={}), split, train,
                                                    seed, progress=progress), float(weight))
                      for root, weight in cfg.roots.items()}
        own = [[(tag, n) for n in part.names] for tag, (part, _) in self.parts.items()]
        order = [pair for group in itertools.zip_longest(*own) for pair in group if pair is not None]
        self.names = [f"{tag}/{name}" for tag, name in order]
        self.lengths = {f"{tag}/{n}": part.lengths[n] for tag, (part, _) in self.parts.items() for n in part.names}
        self.annotations = {f"{tag}/{n}": a for tag, (part, _) in self.parts.items()
                            for n, a in part.annotations.items()}
        self.source = _RootsSource({tag: part.source for tag, (part, _) in self.parts.items()})
        self.report = SkipReport(kept=len(self.names))
        for tag, (part, _) in self.parts.items():
            for reason, count in part.report.reasons.items():
                self.report.reasons[reason] += count
                self.report.examples.setdefault(reason, []).extend(f"{tag}/{n}" for n in part.report.examples[reason])
        position = {tag: {n: i for i, n in enumerate(part.names)} for tag, (part, _) in self.parts.items()}
        self._where = [(tag, position[tag][name]) for tag, name in order]
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """The epoch's draws (training) and its augmentations."""
        self.epoch = epoch
        for part, _ in self.parts.values():
            part.set_epoch(epoch)
        if not self.train:
            self.draws = self._where
            return
        rng, draws = np.random.default_rng([self.seed, epoch, 7]), []
        for tag, (part, weight) in self.parts.items():
            n, whole = len(part), int(weight)
            extra = round((weight - whole) * n)
            draws += [(tag, i) for _ in range(whole) for i in range(n)]
            draws += [(tag, int(i)) for i in rng.permutation(n)[:extra]]
        self.draws = draws

    def __len__(self) -> int:
        # fixed over epochs (a sampler reads it once): the fractions are rounded per root
        return len(self.draws)

    def __getitem__(self, index: int) -> dict:
        tag, i = self.draws[index]
        sample = self.parts[tag][0].item(i, draw=index)   # a sequence drawn twice is augmented twice
        return {**sample, "name": f"{tag}/{sample['name']}"}


class _RootsSource:
    """``load`` and ``file`` of ``<root>/<name>`` names from each root's PoseSource (as the statistics read them)."""

    def __init__(self, sources: dict[str, PoseSource]):
        self.sources = sources

    def load(self, name: str) -> np.ndarray:
        tag, _, own = name.partition("/")
        return self.sources[tag].load(own)

    def file(self, name: str) -> Path:
        tag, _, own = name.partition("/")
        return self.sources[tag].file(own)


def split_dataset(cfg: DataConfig, split: str, train: bool = False, seed: int = 0, progress: bool = False
                  ) -> PoseDataset | RootsDataset:
    """The split of ``data.roots`` when it names any, else of ``data.root``."""
    if cfg.roots:
        return RootsDataset(cfg, split, train, seed, progress)
    return PoseDataset(cfg, split, train, seed, progress=progress)


@dataclass
class Batch:
    """Padded batch. B sequences, C chunks (padded to the longest), L frames, P=242 stream points."""

    x: torch.Tensor            # (B, C, L, P, 2) local coordinates in units
    conf: torch.Tensor         # (B, C, L, P) bool, observed keypoints of real frames
    frame_mask: torch.Tensor   # (B, C, L) bool, real frames
    chunk_mask: torch.Tensor   # (B, C) bool, real chunks
    centres: torch.Tensor      # (B, C, L, S, 2) stream centres in pixels
    unit: torch.Tensor         # (B,) pixels per unit, or (B, C, L) per frame (causal mode)
    num_frames: torch.Tensor   # (B,)
    names: list[str]
    x_true: torch.Tensor | None = None     # (B, C, L, P, 2) ground truth when the input is perturbed
    conf_true: torch.Tensor | None = None  # (B, C, L, P)

    def truth(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the metrics score against: the input itself unless a perturbed input has a truth."""
        return (self.x, self.conf) if self.x_true is None else (self.x_true, self.conf_true)

    def _map(self, fn) -> "Batch":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: fn(v) if torch.is_tensor(v) else v for k, v in values.items()})

    def to(self, device: torch.device | str) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())


def collate(samples: list[dict]) -> Batch:
    """Stack samples, padding the chunk axis with zeros and masks with False."""
    num = max(s["x"].shape[0] for s in samples)

    def pad(key: str) -> torch.Tensor:
        arrays = [s[key] for s in samples]
        out = np.zeros((len(arrays), num) + arrays[0].shape[1:], dtype=arrays[0].dtype)
        for i, a in enumerate(arrays):
            out[i, :a.shape[0]] = a
        return torch.from_numpy(out)

    frame_mask = pad("frame_mask")
    truth = "x_true" in samples[0]
    return Batch(
        x=pad("x"), conf=pad("conf"), frame_mask=frame_mask, chunk_mask=frame_mask.any(-1),
        centres=pad("centres"),
        unit=_units(samples, num),
        num_frames=torch.tensor([int(s["num_frames"]) for s in samples]),
        names=[s["name"] for s in samples],
        x_true=pad("x_true") if truth else None, conf_true=pad("conf_true") if truth else None,
    )


def _units(samples: list[dict], num: int) -> torch.Tensor:
    """(B,) one unit per sequence, or (B, C, L) per frame when a sample has per-frame units."""
    if all(np.ndim(s["unit"]) == 0 for s in samples):
        return torch.tensor([float(s["unit"]) for s in samples])
    out = torch.zeros((len(samples), num, samples[0]["frame_mask"].shape[1]))
    for i, s in enumerate(samples):
        unit = np.broadcast_to(np.float32(s["unit"]), s["frame_mask"].shape)
        out[i, :unit.shape[0]] = torch.from_numpy(np.array(unit))
    return out


class ShardSampler(Sampler):
    """Evaluation order split over ranks without padding (each sequence counted once)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def usable_workers(requested: int, world_size: int = 1) -> int:
    """``requested`` DataLoader workers, capped at this process's share of the CPUs it may run on.

    More workers than cores only adds processes that wait for each other (and DataLoader
    warns about it, once per loader and rank).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cpus // max(1, world_size))
    if requested > share:
        log.info("data.num_workers=%d capped at %d (%d CPUs for %d process(es))", requested, share, cpus, world_size)
    return min(requested, share)


def make_loader(dataset: PoseDataset, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """DataLoader over a dataset; training shuffles with (seed, epoch) and shards over ranks.

    The training sampler is a DistributedSampler also in a single process, so one code
    path serves both; call ``loader.sampler.set_epoch(e)`` and ``dataset.set_epoch(e)``.
    """
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
        num_workers=usable_workers(num_workers, world_size), pin_memory=pin_memory, worker_init_fn=_seed_worker,
        # Own generator: the worker base seed must not draw on the global RNG (exact resume).
        generator=torch.Generator().manual_seed(seed),
    )
