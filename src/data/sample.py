"""One sample: a raw ``[T, 134, 3]`` sequence -> chunked local coordinates of the five
streams (``make_sample``, used by the dataset and, chunk by chunk, by the stream through
``local_chunks``), and the way back to pixels (``to_pixels``)."""
from __future__ import annotations

import numpy as np
import torch

from src.config import DataConfig
from src.data import keypoints as kp
from src.data.causal import causal_centres, causal_clean, time_warp_raw
from src.data.pose import (
    CleanPose, chunk, clean, denormalise, flat_values, normalise, rotate, stream_centres, subtract_references, to_rows,
    unit_length, upright_angle,
)
from src.data.source import DataError
from src.data.transforms import keypoint_dropout, mirror, part_dropout, random_crop, time_warp


def local_chunks(xy: np.ndarray, conf: np.ndarray, centres: np.ndarray, unit: np.ndarray | float, chunk_len: int,
                 reference: str, state: tuple[np.ndarray, np.ndarray] | None = None, whole_sequence: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Upright pixels (T, 134, 2), observed (T, 134), stream centres (T, 5, 2) and the unit ->
    the streams' local coordinates by chunks: x (C, L, P, 2) with the reference pose taken out,
    conf (C, L, P), frame_mask (C, L), the reference (C, P, 2) and the running reference state
    (``state`` carries it from chunk to chunk in a stream; ``whole_sequence``: offline, the
    sequence's mean)."""
    x, frame_mask = chunk(normalise(xy, centres, unit), chunk_len)
    seen = chunk(conf[:, kp.STREAM_ROWS], chunk_len)[0] & frame_mask[..., None]
    x, ref, state = subtract_references(x, seen, reference, state=state, whole_sequence=whole_sequence)
    return x, seen, frame_mask, ref, state


def make_sample(raw: np.ndarray, cfg: DataConfig, rng: np.random.Generator | None = None) -> dict:
    """One raw ``[T, 134, 3]`` sequence -> chunked local coordinates and masks.

    ``rng`` switches the training augmentations on (each also switchable in ``cfg``).
    Returns ``x`` (C, L, P, 2), ``conf`` (C, L, P) with P = 242 stream points, ``frame_mask`` (C, L),
    ``centres`` (C, L, 5, 2) in pixels of the upright picture, the ``unit`` in pixels and
    the ``angle`` (radians) that turns the upright picture back into the input's: one number
    each, or one per frame (C, L) with ``cfg.causal`` (src/data/causal.py); and the
    ``reference`` (C, P, 2) already taken from ``x`` (the mean pose of ``cfg.reference``'s
    points, else 0).
    """
    aug = cfg.augment
    if rng is not None:
        raw = part_dropout(keypoint_dropout(raw, rng, aug.dropout_prob), rng, aug.part_dropout_prob)
    if cfg.causal:
        pose, unit, angle = _causal_pose(raw, cfg, rng)
    else:
        pose = clean(raw, cfg.conf_thresh, cfg.source_fps, cfg.fps, cfg.lowpass_sigma)
        unit = unit_length(pose.xy, pose.conf)
        if unit is None:
            raise DataError("no unit length: neither shoulders, eyelids, eyes nor ears are visible")
        angle = upright_angle(pose.xy, pose.conf)
        pose = CleanPose(rotate(pose.xy, -angle, pose.size), pose.conf, pose.size)
        keep = random_crop(pose.xy.shape[0], cfg.max_frames, rng)
        pose = CleanPose(pose.xy[keep], pose.conf[keep], pose.size)
        if rng is not None and aug.time_warp:
            pose = time_warp(pose, rng, aug.time_warp_max)
    if rng is not None and aug.mirror and rng.random() < aug.mirror_prob:
        pose, angle = mirror(pose), -angle
    centres = causal_centres(pose.xy, pose.conf) if cfg.causal else stream_centres(pose.xy, pose.conf)
    x, conf, frame_mask, reference, _ = local_chunks(pose.xy, pose.conf, centres, unit, cfg.chunk_len,
                                                     cfg.reference, whole_sequence=not cfg.causal)
    out = {}
    if rng is not None and aug.jitter_px > 0:
        # the model sees a jittered input and is scored against the clean pose (x_true)
        sigma = rng.uniform(0, aug.jitter_px) / np.asarray(unit, np.float32)
        noise = rng.standard_normal(x.shape, dtype=np.float32) * np.reshape(sigma, np.shape(sigma) + (1, 1))
        out = {"x_true": x, "conf_true": conf}
        x = x + noise
    return out | {
        "x": x,
        "conf": conf,
        "frame_mask": frame_mask,
        "centres": chunk(centres, cfg.chunk_len)[0],
        "unit": chunk(unit, cfg.chunk_len)[0] if cfg.causal else np.float32(unit),
        "angle": chunk(angle, cfg.chunk_len)[0] if cfg.causal else np.float32(angle),
        "num_frames": pose.xy.shape[0],
        "size": np.array(pose.size, dtype=np.float32),
        "reference": reference,
    }


def _causal_pose(raw: np.ndarray, cfg: DataConfig, rng: np.random.Generator | None
                 ) -> tuple[CleanPose, np.ndarray, np.ndarray]:
    """The causal mode: crop and time warp act on the raw frames (a stream that starts or
    plays there), then the causal cleaner gives the upright pose and per-frame unit and angle."""
    if cfg.source_fps != cfg.fps:
        raise DataError(f"data.causal needs data.source_fps == data.fps (got {cfg.source_fps} and {cfg.fps}): "
                        "resample the files first (run.py data-import resamples .pose files to 30 fps)")
    raw = raw[random_crop(raw.shape[0], cfg.max_frames, rng)]
    if rng is not None and cfg.augment.time_warp:
        raw = time_warp_raw(raw, cfg.conf_thresh, rng, cfg.augment.time_warp_max)
    return causal_clean(raw, cfg.conf_thresh, cfg.lowpass_sigma, cfg.causal_warmup)


def frame_units(sample: dict, num_chunks: int) -> torch.Tensor:
    """The sample's unit for the metrics: (num_chunks,) per sequence, or (C, L) per frame."""
    unit = sample["unit"]
    return torch.from_numpy(np.asarray(unit, np.float32)) if np.ndim(unit) else torch.full((num_chunks,), float(unit))


def to_pixels(local: np.ndarray, sample: dict, stream: str = "parts") -> np.ndarray:
    """Chunked local coordinates (C, L, P, 2) -> a pose file array (T, 134, 3) in pixels.

    Mapped back with the sample's true centres, unit, roll angle and reference; score 1 where
    the source point was observed, 0 elsewhere (so drawings skip what was never seen).
    """
    t = int(sample["num_frames"])
    flat = (local + sample["reference"][:, None]).reshape(-1, kp.NUM_STREAM_POINTS, 2)[:t]
    centres = sample["centres"].reshape(-1, len(kp.STREAMS), 2)[:t]
    size = tuple(float(v) for v in sample["size"])
    # a per-frame unit or angle (causal mode) covers the padded frames too: keep the real ones
    unit, angle = flat_values(sample["unit"]), flat_values(sample.get("angle", 0.0))
    unit, angle = (v[:t] if np.ndim(v) else v for v in (unit, angle))
    points = rotate(denormalise(flat, centres, unit), angle, size)
    xy = to_rows(points, stream)
    seen = to_rows(np.repeat(sample["conf"].reshape(-1, kp.NUM_STREAM_POINTS)[:t, :, None], 2, axis=-1)
                   .astype(np.float32), stream)[..., 0]
    out = np.concatenate([xy, seen[..., None]], axis=-1)
    out[:, kp.SIZE_ROW] = (*sample["size"], 0.0)
    return out
