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

    def measured(levels: int, size: int) -> dict[str, tuple[float, float]]:
        books = pca_reference.fit_codes(train, observed, levels, size)
        on_train, on_new = (pca_reference.codes_mpjpe(books, x, observed, unit) for x in (train, new))
        return {name: (on_train[name], on_new[name]) for name in kp.STREAM_NAMES}

    full, one, two = measured(1, n), measured(1, 2), measured(2, 2)
    for name in kp.STREAM_NAMES:
        assert full[name][0] < 1e-4 and full[name][1] > 1.0, name
        assert one[name][0] > two[name][0] > 1.0, name


def test_codes_ignore_unobserved_points_and_mirror_shares_the_hands():
    """A value at an unobserved point does not move the codebooks (it is filled from the chunk's
    observed frames first). With ``mirror`` a left hand seen only as a mirrored right hand is
    coded exactly."""
    g = torch.Generator().manual_seed(1)
    train = torch.randn(4, 3, kp.NUM_STREAM_POINTS, 2, generator=g)
    observed = torch.ones(4, 3, kp.NUM_STREAM_POINTS, dtype=torch.bool)
    observed[1, 1, :5] = False
    unit = torch.full((4,), 10.0)
    placeholders = []
    for value in (0.0, 1e3):
        x = train.clone()
        x[1, 1, :5] = value
        placeholders.append(pca_reference.fit_codes(x, observed, levels=1, size=2))
    for name in kp.STREAM_NAMES:
        torch.testing.assert_close(placeholders[0][name][0], placeholders[1][name][0])

    lh, rh = kp.STREAM_SLICES["LH"], kp.STREAM_SLICES["RH"]
    one = torch.zeros(1, 3, kp.NUM_STREAM_POINTS, 2)
    one[:, :, rh] = torch.randn(1, 3, rh.stop - rh.start, 2, generator=g)
    new = torch.zeros_like(one)
    new[:, :, lh] = one[:, :, rh] * torch.tensor([-1.0, 1.0])    # the right hand, mirrored, as a left hand
    seen = torch.ones(1, 3, kp.NUM_STREAM_POINTS, dtype=torch.bool)
    with_mirror = pca_reference.fit_codes(torch.cat([one, torch.zeros_like(one)]), seen.repeat(2, 1, 1), 1, 2, mirror=True)
    without = pca_reference.fit_codes(torch.cat([one, torch.zeros_like(one)]), seen.repeat(2, 1, 1), 1, 2)
    assert pca_reference.codes_mpjpe(with_mirror, new, seen, unit[:1])["LH"] < 1e-3
    assert pca_reference.codes_mpjpe(without, new, seen, unit[:1])["LH"] > 1.0


def test_codes_must_be_levels_x_size(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pca_reference.main(["--codes", "2by1024", f"data.root={tmp_path}"])
    assert "LEVELSxSIZE" in capsys.readouterr().err
