"""The training loop, readable top to bottom; one loop for a single process and for DDP.

data -> forward (autocast) -> loss dict -> backward -> unscale + clip -> step ->
zero_grad -> log / validate / checkpoint at intervals.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from src.config import Config, ConfigError, config_differences, save_config, to_dict, validate
from src.data import keypoints as kp
from src.data.dataset import collate, make_loader, split_dataset
from src.data.stats import pose_statistics
from src.losses import compute_losses
from src.metrics.evaluate import autocast, evaluate
from src.models.tokenizer import SignTokenizer
from src.runtime import set_threads
from src.tokens.records import write_jsonl_atomic
from src.tokens.sequence import TokenSettings, sequence_record
from src import distributed
from src.train.checkpoint import (CheckpointError, config_from_checkpoint, load_checkpoint, load_model_state,
                                  payload_checksum, rng_state, save_checkpoint, set_rng_state)
from src.train.optim import build_optimizer, lr_at
from src.files import remove_stale_temps
from src.train.runlog import append_jsonl, create_run_dir, drop_epochs_after, setup_logging

log = logging.getLogger("signstream.train")

# Model settings a resumed run may change: they steer training, not the weights' meaning (e.g.
# the last epochs without refits). A checkpoint made before restarts were counted in rows reads
# as the default (config_from_checkpoint).
RESUME_MAY_CHANGE = {"model.rvq.dead_after_rows", "model.rvq.refit_every"}


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops and the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def find_batch_size(fits: Callable[[int], None], start: int = 4, limit: int = 4096) -> int:
    """Largest batch size in [1, limit] for which ``fits(bs)`` runs without running out of memory.

    Doubles until the first failure, then bisects between the last success and it.
    """
    def ok(bs: int) -> bool:
        try:
            fits(bs)
            return True
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return False

    good, bs = 0, start
    while bs <= limit and ok(bs):
        good, bs = bs, bs * 2
    bad = min(bs, limit + 1)  # the first size that failed (or one past the limit)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    if good == 0:
        raise RuntimeError("not even a batch of 1 sequence fits in memory")
    return good


def _no_buffer_broadcast() -> dict[str, bool]:
    """DDP keyword that stops the per-forward broadcast of rank 0's buffers.

    Codebook buffers are kept equal by the codebooks' own all-reduce, so a re-broadcast is
    not needed. torch >= 2.13 names this ``forward_sync_buffers`` (buffers are still synced
    once at construction, which only makes the ranks start equal) and warns on the older
    ``broadcast_buffers``, which earlier versions need.
    """
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def train_step(forward_model: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, batch, cfg: Config,
               check: Callable[[dict[str, torch.Tensor]], None] | None = None
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """One optimizer step on a batch: forward (autocast) -> losses -> ``check`` -> backward ->
    unscale + clip -> step -> zero_grad. Returns the losses, the gradient norm and the chunk count.

    ``forward_model`` is what runs the forward (maybe DDP- or compile-wrapped); ``model`` owns
    the parameters that are clipped.
    """
    x, conf = batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask]
    target, target_conf = (t[batch.chunk_mask] for t in batch.truth())   # clean pose under input jitter
    device = x.device
    with autocast(device, cfg):
        out = forward_model(x, conf, batch.chunk_mask)
        losses = compute_losses(out, target, target_conf, batch.chunk_mask, cfg.loss, cfg.model.rvq.commitment_beta,
                                cfg.model.stitch)
    if check is not None:
        check(losses)
    scaler.scale(losses["total"]).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return losses, grad_norm, x.shape[0]


class Trainer:
    """Builds data, model and optimiser from a config, then runs epochs.

    ``extend_epochs`` (with ``resume``): train that many epochs past the checkpoint's, the
    learning rate going from its value there down to the floor on a cosine (:func:`lr_at`).
    """

    def __init__(self, cfg: Config, dist_info: distributed.DistInfo, resume: str | None = None,
                 extend_epochs: int = 0):
        if extend_epochs and not resume:
            raise ConfigError("--extend-epochs needs --checkpoint (the run to extend)")
        self.cfg, self.dist = cfg, dist_info
        self.device = dist_info.device
        seed_everything(cfg.train.seed + dist_info.rank)
        threads = set_threads(cfg.threads)
        state = self._check_resume(resume, extend_epochs) if resume else None
        cfg = self.cfg
        # Data first: a root that is missing or unusable leaves no run folder behind.
        self.train_set = split_dataset(cfg.data, "train", train=True, seed=cfg.train.seed, progress=dist_info.is_main)
        self.val_set = split_dataset(cfg.data, "val", progress=dist_info.is_main)
        self.run_dir = self._run_dir(resume, state) if dist_info.is_main else None
        setup_logging(self.run_dir, dist_info.is_main)
        log.info("device %s (%d intra-op CPU threads), world size %d, run folder %s", self.device, threads,
                 dist_info.world_size, self.run_dir)
        try:
            self.model = SignTokenizer.from_config(cfg).to(self.device)
        except ValueError as e:  # a model setting the range checks cannot see (e.g. an unknown pool)
            raise ConfigError(str(e)) from None
        log.info("model: %.2fM parameters", sum(p.numel() for p in self.model.parameters()) / 1e6)
        self.batch_size = self._batch_size()
        loader_args = dict(seed=cfg.train.seed, rank=dist_info.rank, world_size=dist_info.world_size,
                           num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda")
        self.train_loader = make_loader(self.train_set, self.batch_size, train=True, **loader_args)
        self.val_loader = make_loader(self.val_set, self.batch_size, train=False, **loader_args)
        # the training split as validation sees it (no augmentation): for the fitting curve (sharded
        # as val), and whole on every rank for the latents the codebooks are refitted to
        plain = split_dataset(cfg.data, "train") if cfg.train.fit_every or cfg.model.rvq.refit_every else None
        self.fit_loader = make_loader(plain, self.batch_size, train=False, **loader_args) \
            if cfg.train.fit_every else None
        self.refit_loader = make_loader(plain, self.batch_size, train=False, num_workers=cfg.data.num_workers) \
            if cfg.model.rvq.refit_every else None
        # with several roots each is also validated on its own (reported under val_roots)
        self.root_val_loaders = {tag: make_loader(part, self.batch_size, train=False, **loader_args)
                                 for tag, (part, _) in getattr(self.val_set, "parts", {}).items()}
        self.total_steps = cfg.train.epochs * len(self.train_loader)

        self.optimizer = build_optimizer(self.model, cfg.train)
        self.scaler = torch.amp.GradScaler(enabled=False)  # bf16 autocast needs no loss scaling
        self.epoch, self.step, self.best = 0, 0, math.inf
        self.tail: tuple[int, float] | None = None   # (step, lr) where an extension's cosine starts
        if state is not None:
            self._restore(state, resume, extend_epochs > 0)
        else:
            mean, std, delta_std = pose_statistics(self.train_set.source, self.train_set.names, cfg.data,
                                                   cfg.model.stats_sequences)
            self.model.set_standardisation(*(torch.from_numpy(a) for a in (mean, std, delta_std)))
        if cfg.train.compile:
            # Encoder and decoder only, compiled in place (state-dict keys unchanged). The
            # quantiser updates its buffers in place and talks to other ranks: left eager.
            self.model.encoder.compile()
            self.model.decoder.compile()
        self.forward_model = self.model
        if dist_info.enabled:
            ids = [dist_info.local_rank] if self.device.type == "cuda" else None
            self.forward_model = DDP(self.model, device_ids=ids, **_no_buffer_broadcast())
        self.writer = self._tensorboard()

    # -- setup helpers -----------------------------------------------------------------
    def _check_resume(self, path: str, extend_epochs: int = 0) -> dict[str, Any]:
        state = load_checkpoint(path, self.device)
        stored = config_from_checkpoint(state, path)
        self.stored_cfg = stored
        changed = config_differences(to_dict(stored.model), to_dict(self.cfg.model), "model.")
        for key in RESUME_MAY_CHANGE & changed.keys():
            log.info("%s: %r in the checkpoint, %r from now on", key, *changed.pop(key))
        diffs = [f"{k}: {v!r} vs {w!r}" for k, (v, w) in changed.items()]
        if stored.data.chunk_len != self.cfg.data.chunk_len:
            diffs.append(f"data.chunk_len: {stored.data.chunk_len} vs {self.cfg.data.chunk_len}")
        if diffs:
            raise CheckpointError(f"{path}: checkpoint was trained with another model config "
                                  f"(checkpoint vs now): {'; '.join(diffs)}")
        missing = [k for k in ("optimizer", "epoch", "step", "rng") if k not in state]
        if missing:
            raise CheckpointError(f"{path}: cannot resume, missing {', '.join(missing)} (an export-only file?)")
        if extend_epochs:
            epochs = int(state["epoch"]) + extend_epochs
            self.cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, epochs=epochs))
        return state

    def _run_dir(self, resume: str | None, state: dict[str, Any] | None) -> Path:
        if resume and (Path(resume).parent / "config.yaml").is_file():
            run = Path(resume).parent  # continue the same run: metrics.jsonl keeps growing
            # What a kill left: temp files of interrupted saves, and metrics lines of epochs
            # that finished after the checkpoint being resumed.
            for folder in (run, run / "token_samples"):
                for tmp in remove_stale_temps(folder) if folder.is_dir() else []:
                    log.info("removed %s (left by an interrupted save)", tmp)
            dropped = drop_epochs_after(run / "metrics.jsonl", int(state["epoch"]))
            if dropped:
                log.info("metrics.jsonl: dropped %d lines past epoch %d (the checkpoint resumed)",
                         dropped, int(state["epoch"]))
            save_config(self.cfg, run / "config.yaml")
            return run
        return create_run_dir(self.cfg)

    def _restore(self, state: dict[str, Any], path: str, extend: bool = False) -> None:
        load_model_state(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state.get("scaler", {}))
        self.epoch, self.step, self.best = int(state["epoch"]), int(state["step"]), float(state["best"])
        set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)
        sched = state.get("scheduler", {})
        old_tail = tuple(sched["tail"]) if sched.get("tail") else None
        old_lr = lr_at(self.step, self.stored_cfg.train, int(sched.get("total_steps", self.total_steps)), old_tail)
        if extend:
            self.tail = (self.step, old_lr)
            log.info("extending to %d epochs: learning rate %.3g at step %d, cosine down to %.3g at step %d",
                     self.cfg.train.epochs, old_lr, self.step, self.cfg.train.lr * self.cfg.train.min_lr_ratio,
                     self.total_steps)
            return
        self.tail = old_tail
        old_epochs, new_epochs = self.stored_cfg.train.epochs, self.cfg.train.epochs
        if old_epochs != new_epochs:
            log.warning("train.epochs is %d, the checkpoint's run planned %d: the learning-rate schedule is "
                        "stretched to the new length (at step %d: %.3g instead of %.3g). To train N more epochs "
                        "on the old schedule's end instead, resume with --extend-epochs N", new_epochs,
                        old_epochs, self.step, self.lr(self.step), old_lr)

    def lr(self, step: int) -> float:
        """The learning rate at ``step`` (warm-up, cosine, and an extension's tail)."""
        return lr_at(step, self.cfg.train, self.total_steps, self.tail)

    def _batch_size(self) -> int:
        bs = self.cfg.train.batch_size
        if bs != "auto":
            if bs < 1:
                raise ConfigError(f"train.batch_size must be >= 1 or 'auto', got {bs}")
            return bs
        if self.device.type != "cuda":
            log.warning("train.batch_size=auto needs CUDA; using 32 on %s", self.device)
            return 32
        found = find_batch_size(self._probe_batch)
        if self.dist.enabled:
            t = torch.tensor([found], device=self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
            found = int(t)
        log.info("train.batch_size=auto: %d sequences fit", found)
        return found

    def _probe_batch(self, bs: int) -> None:
        """One forward/backward at the worst case: ``bs`` sequences of the longest length."""
        longest = max(self.train_set.lengths.values())
        frames = min(longest, self.cfg.data.max_frames) if self.cfg.data.max_frames else longest
        chunks = -(-int(frames * 1.25) // self.cfg.data.chunk_len)  # time warp can stretch by 25%
        n, length = bs * chunks, self.cfg.data.chunk_len
        x = torch.randn(n, length, kp.NUM_STREAM_POINTS, 2, device=self.device)
        conf = torch.ones(n, length, kp.NUM_STREAM_POINTS, dtype=torch.bool, device=self.device)
        probe = SignTokenizer(self.cfg.model, length).to(self.device)
        with autocast(self.device, self.cfg):
            out = probe(x, conf)
            loss = compute_losses(out, x, conf, torch.ones(bs, chunks, dtype=torch.bool, device=self.device),
                                  self.cfg.loss, self.cfg.model.rvq.commitment_beta, self.cfg.model.stitch)["total"]
        loss.backward()
        del probe, out, loss

    def _tensorboard(self):
        if not self.dist.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter
        # On resume, events past the checkpoint's step (an epoch that is trained again) are purged.
        return SummaryWriter(str(self.run_dir), purge_step=self.step or None)

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> Path | None:
        """Train from ``self.epoch`` to ``train.epochs``; returns the run folder (main process)."""
        cfg = self.cfg.train
        log.info("training %d epochs x %d steps, batch %d sequences/process, %s",
                 cfg.epochs, len(self.train_loader), self.batch_size, self.train_set.report.summary())
        try:
            while self.epoch < cfg.epochs:
                start = time.time()
                train_figures = self.train_epoch()
                record = {"epoch": self.epoch + 1, "step": self.step, "lr": self.lr(self.step),
                          "train": train_figures}
                last = self.epoch + 1 == cfg.epochs
                if self.refit_loader is not None and (self.epoch + 1) % self.cfg.model.rvq.refit_every == 0:
                    self.refit_codebooks()
                if (self.epoch + 1) % cfg.val_every == 0 or last:
                    record.update(self.validate(codebook=(self.epoch + 1) % cfg.codebook_every == 0 or last))
                    if not math.isfinite(record["val"]["loss"]["recon"]):
                        terms = {k: v for k, v in record["val"]["loss"].items() if "/" not in k}
                        raise NonFiniteLoss(f"non-finite validation loss at epoch {self.epoch + 1} ({terms}); "
                                            f"stopping. {self._last_good()}")
                if self.fit_loader is not None and ((self.epoch + 1) % cfg.fit_every == 0 or last):
                    # how well the model fits the chunks it trains on, beside how well it does on new ones
                    record["train_fit"] = self.beside_oracle(self.fit_loader, f"train fit epoch {self.epoch + 1}",
                                                             "train_fit")
                if cfg.token_samples_every and ((self.epoch + 1) % cfg.token_samples_every == 0 or last):
                    self.write_token_samples()
                record["ranks_agree"] = distributed.ranks_agree(self.model)
                if not record["ranks_agree"]:
                    raise RuntimeError("ranks hold different weights or codebooks; stopping")
                self.epoch += 1
                record["time_s"] = time.time() - start
                self.save(record)
        finally:
            if self.writer is not None:
                self.writer.close()
        return self.run_dir

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split; returns the epoch's mean of every loss term."""
        cfg, model = self.cfg, self.forward_model
        self.train_loader.sampler.set_epoch(self.epoch)
        self.train_set.set_epoch(self.epoch)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        chunks = 0
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
                   disable=not self.dist.is_main or None, leave=False)
        tick = last_line = time.time()
        for i, batch in enumerate(bar):
            lr = self.lr(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            losses, grad_norm, n = train_step(model, self.model, self.optimizer, self.scaler, batch.to(self.device),
                                              cfg, self._check_finite)
            self.step += 1
            chunks += n
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v.detach().float() * n
            if not self.dist.is_main:
                continue
            bar.set_postfix(loss=f"{losses['total'].item():.4f}")
            at_step = self.step % cfg.train.log_every == 0
            # Without a progress bar (output to a file) a long epoch still shows it is alive.
            overdue = bar.disable and cfg.train.log_every_s > 0 and time.time() - last_line >= cfg.train.log_every_s
            if at_step or overdue:
                last_line = time.time()
                rate = chunks * self.dist.world_size / max(last_line - tick, 1e-9)
                log.info("epoch %d step %d (%d/%d) loss %.4f recon %.4f lr %.2e grad %.2f %.0f chunks/s",
                         self.epoch + 1, self.step, i + 1, len(self.train_loader), losses["total"].item(),
                         losses["recon"].item(), lr, float(grad_norm), rate)
            if at_step:
                self._log_train_scalars(losses, lr, float(grad_norm))
        keys = sorted(sums)
        flat = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys] + [torch.tensor(
            float(chunks), device=self.device)]))
        means = {k: float(v / flat[-1]) for k, v in zip(keys, flat[:-1])}
        means["chunks_per_s"] = float(flat[-1]) / max(time.time() - tick, 1e-9)
        return means

    def _log_train_scalars(self, losses: dict[str, torch.Tensor], lr: float, grad_norm: float) -> None:
        """Every loss term, per stream too (``train/loss/recon/LH``), the learning rate and the gradient norm.

        Losses sit under ``loss/`` so that the usage regulariser (``train/loss/usage``) cannot
        be taken for the codebook's used fraction (``codebook/usage/<stream>/<level>``).
        """
        for k, v in losses.items():
            self.writer.add_scalar(f"train/loss/{k}", v.item(), self.step)
        self.writer.add_scalar("train/lr", lr, self.step)
        self.writer.add_scalar("train/grad_norm", grad_norm, self.step)

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        # Every rank takes the same decision, so no rank is left waiting in a collective.
        bad = torch.tensor([0.0 if torch.isfinite(losses["total"]) else 1.0], device=self.device)
        if float(distributed.all_reduce_sum(bad)) > 0:
            terms = {k: v.item() for k, v in losses.items() if "/" not in k}
            raise NonFiniteLoss(f"non-finite loss at epoch {self.epoch + 1}, step {self.step} ({terms}); "
                                f"stopping. {self._last_good()}")

    def _last_good(self) -> str:
        last = self.run_dir / "ckpt_last.pt" if self.run_dir is not None else None
        return f"Last good checkpoint: {last}" if last is not None and last.is_file() else \
            "No checkpoint was written yet (fix: check the data with python run.py data-check)"

    def validate(self, codebook: bool) -> dict[str, Any]:
        """Validation figures reduced over ranks, with codebook health; usage histograms when ``codebook``."""
        ev, _ = evaluate(self.model, self.val_loader, self.cfg, self.device)
        ev.reduce()
        result = ev.result()
        out: dict[str, Any] = {"val": result}
        if self.dist.is_main:
            log.info("val epoch %d: recon %.4f | mpjpe px %s", self.epoch + 1, result["loss"]["recon"],
                     " ".join(f"{k} {v:.2f}" for k, v in result["mpjpe_px"].items()))
            for k, v in result["loss"].items():
                self.writer.add_scalar(f"val/loss/{k}", v, self.step)
            for k, v in result["mpjpe_px"].items():
                self.writer.add_scalar(f"val/mpjpe_px/{k}", v, self.step)
        for tag, loader in self.root_val_loaders.items():
            out.setdefault("val_roots", {})[tag] = self.beside_oracle(loader, f"val {tag}", f"val_roots/{tag}")
        # Health comes free with the validation codes, so it is watched from the first epoch.
        out["codebook"] = ev.codebook_health(self.model)
        if self.dist.is_main:
            self._log_codebook(out["codebook"], ev.counts, histograms=codebook)
        return out

    @torch.no_grad()
    def refit_codebooks(self) -> None:
        """The EMA codebooks refitted to the latents of the whole training split (unaugmented)."""
        self.model.eval()
        latents = []
        for batch in self.refit_loader:
            batch = batch.to(self.device)
            latents.append(self.model(batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask], batch.chunk_mask).z)
        self.model.quantizer.refit(torch.cat(latents), self.cfg.model.rvq.kmeans_iters)
        self.model.train()
        log.info("epoch %d: codebooks refitted to %d training latents", self.epoch + 1, sum(len(z) for z in latents))

    def beside_oracle(self, loader, label: str, tag: str) -> dict[str, Any]:
        """MPJPE per stream on ``loader`` beside its chunk-mean oracle; logged as ``label``, in
        TensorBoard under ``<tag>/mpjpe_px/<stream>``."""
        ev, _ = evaluate(self.model, loader, self.cfg, self.device, full=True)   # full: with the oracles
        ev.reduce()
        figures = ev.result()
        out = {"mpjpe_px": figures["mpjpe_px"], "oracle_chunk_mean_px": figures["oracle_chunk_mean_px"],
               "num_sequences": figures["num_sequences"]}
        if self.dist.is_main:
            log.info("%s: mpjpe px %s (chunk-mean oracle %s)", label,
                     " ".join(f"{k} {v:.2f}" for k, v in out["mpjpe_px"].items()),
                     " ".join(f"{v:.2f}" for v in out["oracle_chunk_mean_px"].values()))
            for k, v in out["mpjpe_px"].items():
                self.writer.add_scalar(f"{tag}/mpjpe_px/{k}", v, self.step)
        return out

    def _log_codebook(self, health: dict, counts: np.ndarray, histograms: bool) -> None:
        log.info("codebook usage %% (l0..): %s", " | ".join(
            f"{s} " + "/".join(f"{100 * lv['usage']:.1f}" for lv in levels.values()) for s, levels in health.items()))
        for s, (stream, levels) in enumerate(health.items()):
            for j, (level, stats) in enumerate(levels.items()):
                for key in ("usage", "perplexity", "entropy", "dead"):
                    self.writer.add_scalar(f"codebook/{key}/{stream}/{level}", stats[key], self.step)
                if not histograms:
                    continue
                c = counts[s, j].astype(np.float64)
                ids = np.arange(c.size, dtype=np.float64)
                if c.sum() > 0:
                    self.writer.add_histogram_raw(
                        f"codebook/hist/{stream}/{level}", min=0, max=c.size - 1, num=c.sum(),
                        sum=(ids * c).sum(), sum_squares=(ids ** 2 * c).sum(),
                        bucket_limits=(ids + 1).tolist(), bucket_counts=c.tolist(), global_step=self.step)

    def write_token_samples(self) -> None:
        """Tokens of a few fixed validation sequences (log + file), to watch them settle."""
        if not self.dist.is_main:
            return
        names = self.val_set.names[:self.cfg.train.num_token_samples]
        batch = collate([self.val_set[i] for i in range(len(names))]).to(self.device)
        self.model.eval()
        codes = self.model.tokenize(batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask],
                                    batch.chunk_mask)[0].cpu().numpy()
        self.model.train()
        settings = TokenSettings(self.cfg.data.fps, self.cfg.data.chunk_len, self.cfg.model.rvq.codebook_size,
                                 self.cfg.model.rvq.codes_per_stream, max_run=self.cfg.export.max_run)
        records, start = [], 0
        for name, c in zip(names, batch.chunk_mask.sum(1).tolist()):
            record, _ = sequence_record(name, codes[start:start + c], settings, {"epoch": self.epoch + 1})
            records.append(record)
            start += c
        folder = self.run_dir / "token_samples"
        folder.mkdir(exist_ok=True)
        write_jsonl_atomic(folder / f"epoch_{self.epoch + 1:04d}.jsonl", records)
        preview = records[0]["template"]
        log.info("tokens %s: %s", records[0]["video_name"], preview[:160] + ("..." if len(preview) > 160 else ""))
        self.writer.add_text("tokens/samples", "\n\n".join(f"{r['video_name']}: {r['template']}" for r in records),
                             self.step)

    def save(self, record: dict[str, Any]) -> None:
        """metrics.jsonl line, TensorBoard, and checkpoints (last, best, periodic) on the main process."""
        if not self.dist.is_main:
            return
        append_jsonl(self.run_dir / "metrics.jsonl", record)
        val = record.get("val")
        improved = val is not None and val["loss"]["recon"] < self.best
        if improved:
            self.best = val["loss"]["recon"]
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": {"step": self.step, "total_steps": self.total_steps, "tail": list(self.tail or [])},
            "epoch": self.epoch, "step": self.step, "best": self.best, "config": to_dict(self.cfg),
            "rng": rng_state(), "metrics": {"val": val} if val else {},
        }
        crc = payload_checksum(state)  # once for the last, best and periodic copies
        save_checkpoint(self.run_dir / "ckpt_last.pt", state, crc)
        if improved:
            save_checkpoint(self.run_dir / "ckpt_best.pt", state, crc)
        if self.epoch % self.cfg.train.ckpt_every == 0:
            save_checkpoint(self.run_dir / f"ckpt_epoch{self.epoch}.pt", state, crc)
            self.drop_old_checkpoints()
        self.writer.flush()

    def drop_old_checkpoints(self) -> None:
        """Keep the newest ``train.keep_last`` periodic checkpoints (0: all); last and best stay."""
        keep = self.cfg.train.keep_last
        periodic = sorted(self.run_dir.glob("ckpt_epoch*.pt"), key=lambda p: int(p.stem[len("ckpt_epoch"):]))
        for path in periodic[:-keep] if keep else []:
            path.unlink(missing_ok=True)


def train(cfg: Config, resume: str | None = None, require_distributed: bool = False,
          extend_epochs: int = 0) -> Path | None:
    """Train a tokenizer; under torchrun (RANK set) with DDP. Returns the run folder on rank 0.

    ``extend_epochs`` > 0 continues the ``resume`` checkpoint for that many more epochs.
    """
    validate(cfg)
    if require_distributed and "RANK" not in os.environ:
        raise distributed.LaunchError("train-rvq-ddp runs under torchrun: "
                           "torchrun --nproc_per_node=N run.py train-rvq-ddp --config ... "
                           "(or use train-rvq for one process)")
    info = distributed.setup(cfg.train.device)
    try:
        return Trainer(cfg, info, resume, extend_epochs).fit()
    finally:
        distributed.teardown()
