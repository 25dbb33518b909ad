"""Split latents (``model.rvq.splits``) through training, evaluation and token export."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from src.data.dataset import PoseDataset
from src.data.keypoints import STREAM_NAMES
from src.inference import load_tokenizer, tokenize
from src.metrics.report import evaluation_report
from src.tokens import rle_decode
from src.pipelines.export import export_config, export_tokens
from src.train.loop import train
from tests.conftest import tiny_config


def test_split_latents_train_evaluate_and_export(synth_root, tmp_path):
    run = train(tiny_config(synth_root, tmp_path, "model.rvq.splits=2", "train.epochs=1"))
    model, cfg = load_tokenizer(run / "ckpt_last.pt")
    assert cfg.model.rvq.splits == 2 and model.quantizer.codes_per_stream == 4  # 2 levels x 2 parts
    assert cfg.model.rvq.stream_codes("F") == 2  # the face codes one level of both parts

    report = evaluation_report(model, cfg, "val", torch.device("cpu"), progress=False)
    assert set(report["codebook"]["B"]) == {"l0p0", "l0p1", "l1p0", "l1p1"}
    assert set(report["codebook"]["F"]) == {"l0p0", "l0p1"}
    assert report["result"]["tokens"]["codes_per_chunk"] == cfg.model.rvq.codes_per_chunk
    assert all(0 < report["checks"][f"codes_used_{s}_l0"]["used"] <= 64 for s in STREAM_NAMES)

    plain = export_config(cfg, overrides=["export.enable_rle=false"])
    records, stats, failures = export_tokens(model, plain, "val", checkpoint="ck.pt", progress=False)
    assert records and not failures and stats.codes_per_chunk == cfg.model.rvq.codes_per_chunk
    names = [r["video_name"] for r in records[:2]]
    data = PoseDataset(dataclasses.replace(cfg.data, max_frames=0), "val", names=names)
    expected = {t.name: t.codes for t in tokenize(model, [data[i] for i in range(len(names))])}
    for rec in records[:2]:
        assert rec["meta"]["splits"] == 2 and rec["meta"]["num_levels"] == 4
        decoded = rle_decode(rec["tokens"])
        for s, name in enumerate(STREAM_NAMES):
            want = expected[rec["video_name"]][:, s, :cfg.model.rvq.stream_codes(name)]
            assert np.array_equal(np.array(decoded[name]), want) and (want >= 0).all()

    # Adaptive depth drops whole levels: a chunk keeps level 0 of both parts, never one part alone.
    coarse = export_config(cfg, overrides=["export.adaptive_depth=true", "export.depth_threshold=1e9"])
    records, stats, _ = export_tokens(model, coarse, "val", checkpoint="ck.pt", progress=False)
    assert stats.per_chunk(stats.codes) == 2 * len(STREAM_NAMES)  # F and FB had no level 1 to drop
    assert all(len(c) == 2 for r in records for chunks in rle_decode(r["tokens"]).values() for c in chunks)
