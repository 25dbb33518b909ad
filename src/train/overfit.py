"""The overfit sanity check: train on a handful of sequences and demand the loss collapse."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from src.config import Config
from src.data.source import read_json, split_names
from src.metrics.codebook_health import first_level_min
from src import distributed
from src.train.loop import Trainer


def overfit_check(cfg: Config, num: int = 16, max_ratio: float = 0.2) -> dict:
    """Train on the first ``num`` training sequences (also used as validation) and report.

    Returns initial and final reconstruction loss, their ratio, final MPJPE in pixels,
    per-stream level-0 codebook usage, the time taken and whether ratio <= ``max_ratio``.
    """
    root = Path(cfg.data.root)
    names = [n for n in split_names(root, cfg.data.split_file, "train")
             if n in read_json(root / cfg.data.annotation_file, "annotation file")][:num]
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        split_file = Path(tmp) / "overfit_split.json"
        split_file.write_text(json.dumps({"train": names, "val": names}))
        cfg.data.split_file = str(split_file)  # an absolute path wins over the root
        trainer = Trainer(cfg, distributed.setup(cfg.train.device))
        initial = trainer.validate(codebook=False)["val"]["loss"]["recon"]
        run_dir = trainer.fit()
    final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    ratio = final["val"]["loss"]["recon"] / initial
    return {
        "sequences": len(names), "steps": trainer.step,
        "initial_recon": initial, "final_recon": final["val"]["loss"]["recon"], "ratio": ratio,
        "final_mpjpe_px": final["val"]["mpjpe_px"],
        "codebook_usage_l0": {s: first_level_min(health, "usage") for s, health in final["codebook"].items()},
        "seconds": time.time() - start, "run_dir": str(run_dir), "pass": ratio <= max_ratio,
    }
