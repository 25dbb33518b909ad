"""Smoke test of the one-command demo with a tiny config: every output exists, every figure is finite."""
from __future__ import annotations

import json
import math
import re

from src.commands.demo.main import main
from src.pipelines.demo import ensure_synthetic


def _finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _finite_numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    root = tmp_path / "synthetic"
    assert main(["--config", "configs/tiny.yaml", "--num-synthetic", "24", f"data.root={root}",
                 f"save_path={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert "wrote 24 synthetic signer sequences" in out and "demo finished" in out
    run = next((tmp_path / "runs" / "tiny").iterdir())
    for name in ("ckpt_best.pt", "eval.json", "tokens.jsonl", "tokens.vocab.json", "tokens.llm.jsonl",
                 "recon.gif", "viz/codebook_usage.png", "metrics.jsonl", "train.log"):
        assert (run / name).is_file(), name
        assert str(run / name) in out or name.startswith(("viz/", "metrics")), name
    assert list((run / "viz").glob("timeline_*.png"))
    report = json.loads((run / "eval.json").read_text())
    numbers = list(_finite_numbers(report["result"])) + list(_finite_numbers(report["codebook"]))
    assert numbers and all(math.isfinite(x) for x in numbers)
    row = re.search(r"MPJPE px\s+(.+)", out).group(1).split()
    assert len(row) == 5 and all(math.isfinite(float(v)) for v in row)
    # every check's verdict is in the table, as in eval.json
    verdicts = re.search(r"check <= limit\s+(.+)", out).group(1).split()
    assert verdicts == ["PASS" if report["checks"][f"mpjpe_{s}_vs_mean_oracle"]["pass"] else "FAIL"
                        for s in ("F", "LH", "RH", "B")] + ["-"]
    assert len(re.search(r"check >= \d+ codes\s+(.+)", out).group(1).split()) == 5
    failed = [name for name, c in report["checks"].items() if not c["pass"]]
    assert f"checks: {len(report['checks']) - len(failed)} of {len(report['checks'])} pass" in out
    assert all(f"not reached: {name}" in out for name in failed)
    assert "lossless RLE" in out and "codes used l0 % (raw)" in out
    assert not ensure_synthetic(root, 24)  # a second demo reuses the synthetic set
