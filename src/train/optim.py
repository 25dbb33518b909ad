"""AdamW with decoupled weight decay on matrices only, and the learning rate as a function of the step."""
from __future__ import annotations

import math

import torch

from src.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Decay weight matrices and embeddings; leave biases and norm gains alone (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


def lr_at(step: int, cfg: TrainConfig, total_steps: int, tail: tuple[int, float] | None = None) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at ``total_steps``.

    ``tail = (start_step, start_lr)`` (a run extended by ``--extend-epochs``): from that step
    on, a cosine from ``start_lr`` down to the same floor at ``total_steps``; a run that had
    finished starts at the floor and so stays there. A pure function of the step, so a
    resumed run continues the same schedule.
    """
    floor = cfg.lr * cfg.min_lr_ratio
    if tail is not None and step >= tail[0]:
        progress = min(1.0, (step - tail[0]) / max(1, total_steps - tail[0]))
        return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (tail[1] - floor)
    warmup = min(cfg.warmup_steps, max(1, total_steps // 10))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - floor)
