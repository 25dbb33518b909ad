"""The PCA and k-means references (scripts/pca_reference.py) measure what they say."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from src.data import keypoints as kp

_spec = importlib.util.spec_from_file_location(
    "pca_reference", Path(__file__).resolve().parents[1] / "scripts" / "pca_reference.py")
pca_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pca_reference)


def test_error_falls_with_rank_and_vanishes_at_the_data_rank():
    g = torch.Generator().manual_seed(0)
    n, length = 12, 3
    x = torch.randn(n, length, kp.NUM_STREAM_POINTS, 2, generator=g)
    observed = torch.ones(n, length, kp.NUM_STREAM_POINTS, dtype=torch.bool)
    unit = torch.full((n,), 10.0)
    # Fitted on the chunks themselves: n chunks span at most n - 1 directions around their mean.
    result = pca_reference.pca_mpjpe(x, x, observed, unit, [1, 4, n - 1])
    for name in kp.STREAM_NAMES:
        errors = [result[k][name] for k in (1, 4, n - 1)]
        assert errors[0] > errors[1] > 1.0, name
        assert errors[2] < 1e-4, name


def test_overrides_may_follow_the_dims(tmp_path, capsys):
    """`--dims 8 16 data.root=X` reads X as an override (it used to fail as a dimension)."""
    missing = tmp_path / "nowhere"
    assert pca_reference.main(["--dims", "8", "16", f"data.root={missing}", "--threads", "1"]) == 2
    assert f"data root not found: {missing}" in capsys.readouterr().err


def test_kmeans_codes_fit_their_own_chunks_and_report_new_ones_apart():
    """As many codes as train chunks reproduce them exactly (error 0 on train), while new
    chunks keep an error; one code of two per chunk leaves an error that a second level lowers."""
    g = torch.Generator().manual_seed(0)
    n, length = 16, 2
    train, new = (torch.randn(n, length, kp.NUM_STREAM_POINTS, 2, generator=g) for _ in range(2))
    observed = torch.ones(n, length, kp.NUM_STREAM_POINTS, dtype=torch.bool)
    unit = torch.full((n,), 10.0)
    full = pca_reference.kmeans_mpjpe(train, observed, unit, new, observed, unit, levels=1, size=n)
    one, two = (pca_reference.kmeans_mpjpe(train, observed, unit, new, observed, unit, levels=lv, size=2)
                for lv in (1, 2))
    for name in kp.STREAM_NAMES:
        assert full[name][0] < 1e-4 and full[name][1] > 1.0, name
        assert one[name][0] > two[name][0] > 1.0, name


def test_codes_must_be_levels_x_size(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pca_reference.main(["--codes", "2by1024", f"data.root={tmp_path}"])
    assert "LEVELSxSIZE" in capsys.readouterr().err
