"""Invariants of the EMA residual quantiser: encode/decode identity, STE gradient, codes in
[0, K), EMA and warm-up formulas, dead-code restart, usage regulariser, data init,
quantizer dropout and the state-dict round trip (tiny widths and codebooks, CPU, seconds)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from src.config import RVQConfig
from src.data import keypoints as kp
from src.hardware import FORCE_ENV, detected
from src.models import quantizer
from src.models.quantizer import kernels
from src.models.quantizer.base import runs
from src.models.quantizer import Codebook, MultiStreamRVQ, ResidualQuantizer, sq_distances

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: a second thread only adds contention

S = len(kp.STREAM_NAMES)
BUFFERS = {"initted", "embed", "embed_sum", "cluster_size", "unused_rows", "updates"}
NEVER = 10**9  # dead_after_rows that never restarts


def rvq_cfg(**overrides) -> RVQConfig:
    """Every stream codes every level unless ``stream_levels`` is given."""
    values = dict(levels=3, codebook_size=16, kmeans_iters=5, dead_after_rows=NEVER, fsq_streams=[])
    values.update(overrides)
    values.setdefault("stream_levels", {name: values["levels"] for name in kp.STREAM_NAMES})
    return RVQConfig(**values)


def make_rq(dim: int = 8, seed: int = 0, **overrides) -> ResidualQuantizer:
    torch.manual_seed(seed)
    return ResidualQuantizer(dim, rvq_cfg(**overrides))


def one(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (1, N, D): a single stream as the one group of a codebook."""
    return x[None]


def fit(module: torch.nn.Module, data: torch.Tensor, steps: int) -> torch.nn.Module:
    """Training-mode forwards on fixed data: data init, then EMA updates."""
    module.train()
    for _ in range(steps):
        module(data)
    return module


def clustered(n: int, dim: int, centres: int = 8, scale: float = 3.0, noise: float = 0.05,
              seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = scale * torch.randn(centres, dim, generator=g)
    return means[torch.randint(0, centres, (n,), generator=g)] + noise * torch.randn(n, dim, generator=g)


def set_codebook(cb: Codebook, embed: torch.Tensor, cluster_size: torch.Tensor, updates: int) -> None:
    """A codebook in a known, self-consistent state (embed_sum = embed * cluster_size)."""
    cb.embed.copy_(embed[None])
    cb.cluster_size.copy_(cluster_size[None])
    cb.embed_sum.copy_((embed * cluster_size[:, None])[None])
    cb.updates.fill_(updates)
    cb.initted.fill_(True)


# ---------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_decode_of_encode_equals_eval_forward_bit_for_bit(distance):
    z = one(4.0 * torch.randn(64, 8) + 1.0)
    rq = fit(make_rq(distance=distance), z, 3).eval()
    res = rq(z)
    codes = rq.encode(z)
    assert torch.equal(codes, res.codes)
    assert torch.equal(rq.decode(codes), res.quantized)

    torch.manual_seed(1)
    ms = fit(MultiStreamRVQ(8, rvq_cfg(distance=distance)), torch.randn(16, S, 8) * 3, 3).eval()
    zs = torch.randn(16, S, 8) * 3
    res = ms(zs)
    codes = ms.encode(zs)
    assert torch.equal(codes, res.codes)
    assert torch.equal(ms.decode(codes), res.quantized)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_training_forward_equals_decode_of_its_codes(distance):
    """The value is exactly the sum of the codewords picked (from the codebook as it was
    before this forward's EMA update), i.e. the STE adds an exact zero."""
    z = one(4.0 * torch.randn(64, 8) + 1.0)
    rq = fit(make_rq(distance=distance), z, 1)  # data init done; now a plain EMA step
    before = copy.deepcopy(rq)
    res = rq(z)
    assert torch.equal(before.decode(res.codes), res.quantized)
    assert not torch.equal(rq.levels[0].embed, before.levels[0].embed)  # the EMA did move

    torch.manual_seed(1)
    zs = torch.randn(16, S, 8) * 3
    ms = fit(MultiStreamRVQ(8, rvq_cfg(distance=distance)), zs, 1)
    before = copy.deepcopy(ms)
    res = ms(zs)
    assert torch.equal(before.decode(res.codes), res.quantized)


def test_cosine_decodes_in_the_normalised_space():
    z = one(5.0 * torch.randn(64, 8) + 2.0)  # norms far from 1
    rq = fit(make_rq(distance="cosine"), z, 5).eval()
    q = rq.decode(rq.encode(z))
    unit = F.normalize(z, dim=-1)
    assert (q - unit).norm(dim=-1).mean() < 0.5
    assert (q - z).norm(dim=-1).min() > 2.0
    assert torch.equal(q, rq(z).quantized)


def test_codes_in_range_with_shapes():
    k, levels = 16, 3
    z = torch.randn(S, 40, 8)
    rq = ResidualQuantizer(8, rvq_cfg(codebook_size=k, levels=levels), groups=S)
    for codes in (rq(z).codes, rq.encode(z), rq.eval()(z).codes):
        assert codes.shape == (S, 40, levels) and codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < k
    ms = MultiStreamRVQ(8, rvq_cfg(codebook_size=k, levels=levels))
    zs = torch.randn(12, S, 8)
    res = ms(zs)
    assert res.quantized.shape == zs.shape
    assert res.commit_loss.shape == (S,) and res.usage_loss.shape == (S,)
    for codes in (res.codes, ms.encode(zs)):
        assert codes.shape == (12, S, levels) and codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < k


@pytest.mark.parametrize("splits", [1, 2])
def test_reconstruction_error_falls_as_levels_are_added(splits):
    levels = 4
    torch.manual_seed(0)
    z = torch.randn(256, S, 8)
    ms = fit(MultiStreamRVQ(8, rvq_cfg(levels=levels, splits=splits)), z, 20).eval()
    codes, rel = ms.encode_with_residuals(z)
    assert codes.shape == (256, S, levels * splits) and rel.shape == (256, S, levels)
    errors = [z.norm(dim=-1).mean()]
    for k in range(1, levels + 1):
        left = (z - ms.decode(codes[..., :k * splits])).norm(dim=-1)
        errors.append(left.mean())
        # The residual norms reported for adaptive depth are these very residuals.
        torch.testing.assert_close(rel[..., k - 1], left / z.norm(dim=-1), rtol=1e-4, atol=1e-5)
    errors = torch.stack(errors)
    assert (errors[1:] <= errors[:-1]).all(), errors
    assert errors[-1] < 0.75 * errors[1], errors  # each extra level really helps overall


def test_splits_quantise_each_part_with_its_own_codebooks():
    """splits=2: the latent's halves are two independent residual quantisers; codes are
    level-major (level 0 of both parts first) and decode sums each part's first k levels."""
    torch.manual_seed(0)
    ms = fit(MultiStreamRVQ(8, rvq_cfg(levels=2, splits=2)), torch.randn(64, S, 8) * 2, 3).eval()
    z = torch.randn(10, S, 8) * 2
    codes, res = ms.encode(z), ms(z)
    assert codes.shape == (10, S, 4) and torch.equal(codes, res.codes)
    assert torch.equal(ms.decode(codes), res.quantized)
    for s, name in enumerate(kp.STREAM_NAMES):
        for part in range(2):
            x = z[:, s, 4 * part:4 * part + 4]
            expected, residual = torch.zeros_like(x), x
            for level in range(2):
                embed = ms.codebook(name, level * 2 + part)["embed"]
                c = torch.cdist(residual, embed).argmin(-1)
                assert torch.equal(codes[:, s, level * 2 + part], c)
                expected, residual = expected + embed[c], residual - embed[c]
            torch.testing.assert_close(ms.decode(codes[..., :2])[:, s, 4 * part:4 * part + 4],
                                       ms.codebook(name, part)["embed"][codes[:, s, part]])
            torch.testing.assert_close(res.quantized[:, s, 4 * part:4 * part + 4], expected)
    with pytest.raises(ValueError, match="whole levels"):
        ms.decode(codes[..., :3])
    with pytest.raises(ValueError, match="divide model.latent_dim"):
        MultiStreamRVQ(8, rvq_cfg(splits=3))


# ---------------------------------------------------------------- EMA


def test_ema_update_is_laplace_smoothed_lerp_of_running_sums():
    decay, eps, k = 0.8, 1e-5, 4
    cb = Codebook(2, rvq_cfg(codebook_size=k, ema_decay=decay, laplace_eps=eps, init="random"))
    embed = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    size = torch.tensor([2.0, 1.0, 3.0, 0.5])
    set_codebook(cb, embed, size, updates=10**6)  # warm-up over: the plain decay applies
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # all nearest to code 0
    old_sum = cb.embed_sum[0].clone()

    quantized, codes, _, _ = cb.train()(one(x))
    assert codes.tolist() == [[0, 0, 0]]
    assert torch.equal(quantized[0], embed[[0, 0, 0]])  # quantised with the pre-update codebook
    counts = torch.tensor([3.0, 0, 0, 0])
    sums = torch.zeros(k, 2).index_add_(0, codes[0], x)
    new_size = decay * size + (1 - decay) * counts
    new_sum = decay * old_sum + (1 - decay) * sums
    total = new_size.sum()
    smoothed = (new_size + eps) / (total + k * eps) * total
    torch.testing.assert_close(cb.cluster_size[0], new_size)
    torch.testing.assert_close(cb.embed_sum[0], new_sum)
    torch.testing.assert_close(cb.embed[0], new_sum / smoothed[:, None])
    assert int(cb.updates) == 10**6 + 1
    assert cb.unused_rows.tolist() == [[0, 3, 3, 3]]   # the 3 rows of the step


@pytest.mark.parametrize("t", [0, 3, 40, 10**5])
def test_ema_decay_warm_up(t):
    decay = 0.99
    expected = min(decay, (1.0 + t) / (10.0 + t))
    cb = Codebook(2, rvq_cfg(codebook_size=2, ema_decay=decay, init="random"))
    set_codebook(cb, torch.tensor([[0.0, 0.0], [9.0, 9.0]]), torch.tensor([4.0, 2.0]), updates=t)
    cb.train()(one(torch.tensor([[1.0, 1.0]] * 5)))
    torch.testing.assert_close(cb.cluster_size[0], torch.tensor([4.0 * expected + 5.0 * (1 - expected),
                                                                 2.0 * expected]))
    assert int(cb.updates) == t + 1


def test_repeated_ema_updates_converge_to_the_mean_of_assigned_vectors():
    cb = Codebook(2, rvq_cfg(codebook_size=4, ema_decay=0.8, init="random")).train()
    embed = torch.tensor([[4.0, 4.0], [-20.0, 0.0], [0.0, -20.0], [-20.0, -20.0]])
    set_codebook(cb, embed, torch.ones(4), updates=10**6)
    x = torch.tensor([[5.0, 5.0], [6.0, 5.0], [5.0, 7.0], [4.5, 5.5]])
    for _ in range(100):
        _, codes, _, _ = cb(one(x))
        assert (codes == 0).all()
    torch.testing.assert_close(cb.embed[0, 0], x.mean(0), rtol=0, atol=1e-3)


# ---------------------------------------------------------------- gradients


def test_straight_through_gradient_is_exactly_identity():
    rq = make_rq(levels=2)
    z = torch.randn(1, 32, 8, requires_grad=True)
    rq(z).quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))

    ms = MultiStreamRVQ(8, rvq_cfg(levels=2))
    zs = torch.randn(6, S, 8, requires_grad=True)
    ms(zs).quantized.sum().backward()
    assert torch.equal(zs.grad, torch.ones_like(zs))
    for module in (rq, ms):
        assert list(module.parameters()) == []
        for buf in module.buffers():
            assert not buf.requires_grad and buf.grad is None


def test_commitment_gradient_pulls_z_towards_its_codeword():
    rq = make_rq(levels=1)
    z = one(torch.randn(32, 8) * 2)
    fit(rq, z, 2)
    before = copy.deepcopy(rq)
    z.requires_grad_(True)
    res = rq(z)
    res.commit_loss.backward()
    q = before.decode(res.codes)
    assert z.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, 2 * (z - q).detach() / z.numel())  # mean over the one group
    # A descent step moves every row from z towards its codeword.
    assert ((-z.grad * (q - z.detach())).sum(-1) > 0).all()
    for buf in rq.buffers():
        assert not buf.requires_grad and buf.grad is None


# ---------------------------------------------------------------- dead-code restart


def test_dead_codes_are_restarted_from_the_batch_and_recent_ones_kept():
    dead_after = 100   # rows: the three batches below hold 32, 36 and 32
    cfg = rvq_cfg(codebook_size=8, dead_after_rows=dead_after, ema_decay=0.9, init="random")
    torch.manual_seed(0)
    cb = Codebook(4, cfg).train()
    embed = torch.cat([torch.tensor([[0.0] * 4, [5.0] * 4, [-5.0] * 4]), 50 + torch.randn(5, 4)])
    set_codebook(cb, embed, torch.ones(8), updates=10**6)
    ref = copy.deepcopy(cb)
    ref.dead_after = NEVER
    near0, near1 = 0.1 * torch.randn(16, 4), 5 + 0.1 * torch.randn(16, 4)
    batch = torch.cat([near0, near1])
    batches = [batch, torch.cat([batch, -5 + 0.1 * torch.randn(4, 4)]), batch]  # code 2 used at step 2 only
    rows = 0
    for step, x in enumerate(batches, 1):
        cb(one(x))
        ref(one(x))
        rows += len(x)
        if step < len(batches):
            assert cb.unused_rows[0, 3:].tolist() == [rows] * 5  # counting the rows seen, up to 68
            assert torch.equal(cb.embed, ref.embed)              # nothing restarted yet
    x = batches[-1]
    assert cb.unused_rows[0].tolist() == [0, 0, 32] + [0] * 5   # restarted ones reset; code 2 counts on
    assert torch.equal(cb.embed[0, :3], ref.embed[0, :3])        # used codes untouched by the restart
    spread = (x - x.mean(0)).norm(dim=-1).mean()
    to_batch = torch.cdist(cb.embed[0, 3:], x).min(-1).values
    assert (to_batch < 0.1 * spread).all(), to_batch             # re-seeded on batch rows
    assert (torch.cdist(ref.embed[0, 3:], x).min(-1).values > 10).all()
    assert torch.equal(cb.cluster_size[0, 3:], torch.ones(5))
    assert torch.equal(cb.embed_sum[0, 3:], cb.embed[0, 3:])


def test_restart_jitter_follows_the_batch_spread_not_its_offset():
    offset = torch.tensor([1000.0, -2000.0, 500.0, 3000.0])
    torch.manual_seed(0)
    x = offset + 0.1 * torch.randn(32, 4)
    cb = Codebook(4, rvq_cfg(codebook_size=8, dead_after_rows=1, init="random")).train()
    _, codes, _, _ = cb(one(x))
    restarted = torch.ones(8, dtype=torch.bool)
    restarted[codes[0]] = False
    assert int(restarted.sum()) >= 6
    radius = (x - x.mean(0)).norm(dim=-1).max()
    assert ((cb.embed[0, restarted] - x.mean(0)).norm(dim=-1) < 1.5 * radius).all()


# ---------------------------------------------------------------- usage regulariser


def test_usage_kl_gradient_spreads_a_collapsed_batch():
    torch.manual_seed(0)
    cb = Codebook(4, rvq_cfg(codebook_size=16, init="random"))
    cb.embed.copy_(2 * torch.randn(1, 16, 4))
    embed = cb.embed[0]
    centre = (embed - embed.mean(0)).norm(dim=-1).argmin()
    z = (embed[centre] + 0.05 * torch.randn(64, 4)).requires_grad_(True)
    assert len(cb.encode(one(z.detach())).unique()) == 1

    def kl() -> torch.Tensor:
        return kernels.UsageKL.apply(sq_distances(z, embed)[None], cb.temperature)[0]

    start = kl().item()
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(60):
        loss = kl()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Factor 0.5 and >= 4 codes: over 20 seeds the worst was 0.43 and 6 codes.
    assert kl().item() < 0.5 * start
    assert len(cb.encode(one(z.detach())).unique()) >= 4


def _level_losses_reference(x: torch.Tensor, embed: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
    """Commitment and usage KL (G,) of one level by plain autograd in float64: the definitions,
    with the row std of the distances held constant (as the hand-written backward does)."""
    x, embed = x.double(), embed.double()
    d = torch.baddbmm(embed.pow(2).sum(-1)[:, None], x, embed.transpose(1, 2), alpha=-2)
    codes = d.argmin(-1)
    q = torch.gather(embed, 1, codes[..., None].expand(-1, -1, embed.shape[-1]))
    commit = (x - q).pow(2).mean((1, 2))
    probs = torch.softmax(d / (d.std(-1, keepdim=True).detach() * -temperature), -1)
    u = probs.mean(1)
    return codes, commit, (u * torch.log(u * embed.shape[1] + 1e-12)).sum(-1)


@pytest.mark.parametrize("active, bf16", [(False, False), (True, False), (False, True)])
def test_level_losses_and_gradient_match_autograd_in_float64(active, bf16, monkeypatch):
    """The fused level losses (in-place passes, gradient formed in the forward) give the same
    codes, the losses to float rounding and the gradient to 1e-5 of its norm; with the usage
    gradient's matmul in bf16 (CPUs that have it in hardware; forced here) to 1% of its norm.
    The codebook is a first level: its distances stay fp32 either way, so the codes are exact."""
    monkeypatch.setenv(FORCE_ENV, "1" if bf16 else "0")
    assert kernels.bf16_usage_grad() == bf16
    torch.manual_seed(0)
    cb = Codebook(16, rvq_cfg(codebook_size=64, init="random"), groups=2).train()
    cb.embed.copy_(torch.randn(2, 64, 16))
    rows = torch.rand(300) < 0.7 if active else None
    x = (torch.randn(2, 300, 16) * 1.5).requires_grad_(True)
    ref_x = x.detach().double().requires_grad_(True)
    picked = ref_x if rows is None else ref_x[:, rows]
    codes, commit, usage = _level_losses_reference(picked, cb.embed.clone(), cb.temperature)
    weights = torch.tensor([0.7, 1.3], dtype=torch.float64)
    ((commit + usage) * weights).sum().backward()

    _, got_codes, got_commit, got_usage = cb(x, rows)
    ((got_commit + got_usage) * weights.float()).sum().backward()
    assert torch.equal(got_codes if rows is None else got_codes[:, rows], codes)
    torch.testing.assert_close(got_commit.double(), commit.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_usage.double(), usage.detach(), rtol=1e-5, atol=1e-7)
    error = (x.grad.double() - ref_x.grad).norm() / ref_x.grad.norm()
    assert error < (1e-2 if bf16 else 1e-5), error


def test_usage_term_of_a_large_batch_is_that_of_usage_rows_drawn_from_it():
    """With more rows than ``usage_rows``, the usage KL and its gradient are those of the rows
    drawn (the first draw of the step), the commitment that of every row; rows not drawn get
    the commitment's gradient only."""
    torch.manual_seed(0)
    cb = Codebook(16, rvq_cfg(codebook_size=64, init="random", usage_rows=100), groups=2).train()
    cb.embed.copy_(torch.randn(2, 64, 16))
    x = (torch.randn(2, 300, 16) * 1.5).requires_grad_(True)
    ref_x = x.detach().double().requires_grad_(True)
    torch.manual_seed(1)
    pick = torch.randperm(300)[:100]
    _, commit, _ = _level_losses_reference(ref_x, cb.embed.clone(), cb.temperature)
    _, _, usage = _level_losses_reference(ref_x[:, pick], cb.embed.clone(), cb.temperature)
    (commit.sum() + usage.sum()).backward()

    torch.manual_seed(1)
    _, _, got_commit, got_usage = cb(x)
    (got_commit.sum() + got_usage.sum()).backward()
    torch.testing.assert_close(got_commit.double(), commit.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_usage.double(), usage.detach(), rtol=1e-5, atol=1e-7)
    error = (x.grad.double() - ref_x.grad).norm() / ref_x.grad.norm()
    assert error < 1e-5, error
    _, _, full_usage = _level_losses_reference(ref_x.detach(), cb.embed.clone(), cb.temperature)
    assert not torch.allclose(got_usage.double(), full_usage, rtol=1e-3)   # not every row's usage


def test_training_distances_are_exact_where_bf16_is_off(monkeypatch):
    """Without bf16 hardware (forced here, on any CPU) a residual level's training search is the
    exact fp32 nearest code, and oneDNN's matmul precision is never touched."""
    monkeypatch.setenv(FORCE_ENV, "0")
    torch.manual_seed(0)
    cb = Codebook(256, rvq_cfg(codebook_size=1024, init="random"), groups=2, residual=True)
    x = torch.randn(2, 2000, 256)
    exact = Codebook.distances(x, cb.embed, cb.embed.pow(2).sum(-1)).argmin(-1)
    _, picked, _, _ = cb.train()(x)
    assert not kernels.bf16_distances()
    assert torch.equal(picked, exact)


@pytest.mark.skipif(not detected().bf16, reason="this CPU has no bf16 matmul in hardware")
def test_training_distances_in_bf16_pick_the_nearest_code_up_to_rounding():
    """In training a residual level's distance matmul rounds its inputs to bf16: each code it
    picks is the fp32 nearest, or one whose fp32 distance is within that rounding's bound of it
    (a near-tie); the flag is restored, and evaluation and the first level search in fp32."""
    torch.manual_seed(0)
    first = Codebook(256, rvq_cfg(codebook_size=1024, init="random"), groups=2)
    cb = Codebook(256, rvq_cfg(codebook_size=1024, init="random"), groups=2, residual=True)
    cb.load_state_dict(first.state_dict())
    x = torch.randn(2, 2000, 256)
    exact = Codebook.distances(x, cb.embed, cb.embed.pow(2).sum(-1))
    best = exact.min(-1)
    before = torch.backends.mkldnn.matmul.fp32_precision
    _, picked, _, _ = cb.train()(x)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    # each of x.e's D products has both factors rounded (2^-9 each): |error| <= 2^-8 |x| |e|
    bound = 2 * 2 * 2 ** -8 * x.norm(dim=-1) * cb.embed.norm(dim=-1).amax(-1, keepdim=True)
    gap = exact.gather(-1, picked[..., None]).squeeze(-1) - best.values
    assert (gap <= bound).all()
    flips = (picked != best.indices).float().mean()
    assert 0 < flips < 0.02, flips   # near-ties only; 0 would mean fp32 ran
    _, evaluated, _, _ = cb.eval()(x)   # the EMA step moved the codes: search them again in fp32
    assert torch.equal(evaluated, Codebook.distances(x, cb.embed, cb.embed.pow(2).sum(-1)).argmin(-1))
    _, level0, _, _ = first.train()(x)
    assert torch.equal(level0, best.indices)


def test_a_second_backward_through_a_level_is_refused():
    """The level's backward scales its saved gradient in place: autograd must refuse a second
    pass (retain_graph) rather than give a wrong gradient silently."""
    torch.manual_seed(0)
    cb = Codebook(4, rvq_cfg(codebook_size=8, init="random")).train()
    x = torch.randn(1, 32, 4, requires_grad=True)
    _, _, commit, usage = cb(x)
    (commit + usage).sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (commit + usage).sum().backward()


@pytest.mark.parametrize("caps, expected", [([1, 2, 2, 2, 1], [slice(1, 4)]),
                                            ([2, 1, 2, 1, 2], [slice(0, 1), slice(2, 3), slice(4, 5)]),
                                            ([1, 1, 1, 1, 1], []), ([2, 2, 2, 2, 2], [slice(0, 5)])])
def test_encode_compares_only_the_groups_that_code_a_level(caps, expected):
    """Groups past their cap get -1 and are never compared (runs of groups as views); the
    others get exactly the codes of an encode over every group."""
    assert runs([c > 1 for c in caps]) == expected
    torch.manual_seed(0)
    z = torch.randn(S, 40, 8)
    capped = fit(ResidualQuantizer(8, rvq_cfg(levels=2), S, caps), z, 2).eval()
    full = ResidualQuantizer(8, rvq_cfg(levels=2), S)
    full.load_state_dict(capped.state_dict())
    codes, reference = capped.encode(z), full.eval().encode(z)
    on = torch.tensor(caps)[:, None] > torch.arange(2)
    assert torch.equal(codes, torch.where(on[:, None, :], reference, -1))


# ---------------------------------------------------------------- state


def _buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.named_buffers()}


def _plain_attributes(module: torch.nn.Module) -> dict[str, dict]:
    """Every module's non-tensor attributes (anything outside parameters/buffers/modules)."""
    out = {}
    for name, m in module.named_modules():
        attrs = {k: v for k, v in vars(m).items() if k not in ("_parameters", "_buffers", "_modules")}
        assert not any(torch.is_tensor(v) for v in attrs.values()), f"plain tensor attribute in {name}"
        out[name] = copy.deepcopy(attrs) | {"buffer names": list(m._buffers)}
    return out


@pytest.mark.parametrize("kind", ["codebook", "multistream"])
def test_state_dict_round_trip_is_the_whole_state(kind):
    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        cfg = rvq_cfg(codebook_size=16, levels=2, dead_after_rows=24)
        return Codebook(4, cfg, groups=S) if kind == "codebook" else MultiStreamRVQ(4, cfg)

    shape = (S, 48, 4) if kind == "codebook" else (12, S, 4)
    trained = build(0).train()
    attrs = _plain_attributes(trained)
    torch.manual_seed(5)
    for _ in range(6):
        trained(torch.randn(shape) * 2 + 1)
    assert _plain_attributes(trained) == attrs  # training changed nothing outside the buffers
    names = {n.rsplit(".", 1)[-1] for n, _ in trained.named_buffers()}
    # group_levels comes from the config, depth_threshold from the export settings, not the state
    assert names - {"group_levels", "depth_threshold"} == BUFFERS

    loaded, other = build(1), build(1)
    loaded.load_state_dict(trained.state_dict())
    x = torch.randn(shape)
    encode = (lambda m: m.eval().encode(x)) if kind == "codebook" else (lambda m: m.encode(x))
    a, b = _buffers(trained), _buffers(loaded)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(encode(trained), encode(loaded))
    assert not all(torch.equal(a[k], v) for k, v in _buffers(other).items())
    assert not torch.equal(encode(trained), encode(other))

    # Resuming continues exactly as the original would have (restarts included).
    trained.train(), loaded.train()
    x = torch.randn(shape) * 2 + 1
    for m in (trained, loaded):
        torch.manual_seed(9)
        m(x)
    a, b = _buffers(trained), _buffers(loaded)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- data init


@pytest.mark.parametrize("init", ["kmeans", "sample"])
@pytest.mark.parametrize("n", [256, 5])
def test_first_batch_initialises_codes_inside_the_data(init, n):
    k = 16
    x = clustered(n, 4) + 10.0  # away from the origin, where the untrained codes sit
    cb = Codebook(4, rvq_cfg(codebook_size=k, init=init))
    assert not bool(cb.initted)
    cb.eval()(one(x))
    assert not bool(cb.initted)  # eval never initialises
    cb.train()(one(x))
    assert bool(cb.initted)
    assert torch.isfinite(cb.embed).all()
    embed = cb.embed[0]
    spread = (x - x.mean(0)).norm(dim=-1).mean()
    nearest = torch.cdist(embed, x).min(-1).values  # (K,)
    # After the first EMA step a code may sit between two blobs that share it, never outside.
    assert (nearest < 0.5 * spread).all(), nearest / spread
    assert nearest.mean() < 0.1 * spread, nearest / spread
    slack = 0.05 * spread  # the 1% jitter of sampled codes
    assert ((embed >= x.min(0).values - slack) & (embed <= x.max(0).values + slack)).all()


def test_random_init_needs_no_data():
    cb = Codebook(4, rvq_cfg(init="random"))
    assert bool(cb.initted)
    with pytest.raises(ValueError, match="model.rvq.init"):
        Codebook(4, rvq_cfg(init="kmean"))
    with pytest.raises(ValueError, match="model.rvq.distance"):
        ResidualQuantizer(4, rvq_cfg(distance="dot"))


def test_sq_distances_matches_cdist():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g) * 3 + 1
    e = torch.randn(20, 8, generator=g)
    torch.testing.assert_close(sq_distances(x, e), torch.cdist(x, e) ** 2, rtol=1e-4, atol=1e-4)
    assert torch.equal(sq_distances(x, e).argmin(-1), torch.cdist(x, e).argmin(-1))


@pytest.mark.parametrize("rows", [1, 3, 300])
def test_codebook_encode_picks_the_nearest_code_of_its_own_group(rows):
    """encode forms the distances code-major; one row (a streaming chunk) and many rows both
    give each group's nearest code under cdist."""
    g = torch.Generator().manual_seed(rows)
    cb = Codebook(16, rvq_cfg(codebook_size=64, init="random"), groups=3).eval()
    x = torch.randn(3, rows, 16, generator=g)
    expected = torch.stack([torch.cdist(x[i], cb.embed[i]).argmin(-1) for i in range(3)])
    assert torch.equal(cb.encode(x), expected)


@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("rows", [1, 7, 500])
def test_shortlist_rescored_in_fp32_gives_the_fp32_nearest_code(rows, int8, monkeypatch):
    """A first pass (int8 or bf16 codewords) keeps 16 candidates, fp32 distances pick among
    them: on random codebooks (1024 codes, 256 dims, as the default model) the codes equal
    encode's, also for a slice of groups; with 1 candidate the first pass alone decides and misses."""
    if int8 and not kernels.INT8_FIRST_PASS:
        pytest.skip("this torch build has no weight-only int8 matmul")
    monkeypatch.setattr(kernels, "INT8_FIRST_PASS", int8)
    g = torch.Generator().manual_seed(rows)
    cb = Codebook(256, rvq_cfg(codebook_size=1024, init="random"), groups=3).eval()
    assert (cb.shortlist_tables()[0].dtype == torch.int8) == int8
    x = cb.embed[:, :rows] + 0.5 * torch.randn(3, rows, 256, generator=g) / 16   # near a code, as latents are
    assert torch.equal(cb.encode_shortlist(x, k=16), cb.encode(x))
    assert torch.equal(cb.encode_shortlist(x[1:], slice(1, 3)), cb.encode(x[1:], slice(1, 3)))
    far = torch.randn(3, 500, 256, generator=g) / 16                               # no code near: small gaps
    assert torch.equal(cb.encode_shortlist(far, k=16), cb.encode(far))
    assert not torch.equal(cb.encode_shortlist(far, k=1), cb.encode(far))


@pytest.mark.parametrize("dim", [8, 64])
def test_shortlist_breaks_ties_to_the_lowest_id_and_follows_codebook_changes(dim):
    """Equal codewords tie: the lowest id, as encode's argmin, even when more codewords tie
    than the shortlist holds (a fresh level's zero codewords); in-place changes are followed."""
    cb = Codebook(dim, rvq_cfg(codebook_size=64, init="random"), groups=2).eval()
    cb.embed[:, 20] = cb.embed[:, 3]   # duplicate codewords
    x = cb.embed[:, [3, 20]].clone()
    assert cb.encode_shortlist(x, k=8).tolist() == [[3, 3]] * 2 == cb.encode(x).tolist()
    cb.embed[:, 3] += 10.0             # in place: the cached first-pass tables must follow
    assert cb.encode_shortlist(x, k=8).tolist() == [[20, 20]] * 2 == cb.encode(x).tolist()
    cb.embed.zero_()                   # every code ties
    x = torch.randn(2, 30, dim)
    assert (cb.encode_shortlist(x, k=8) == 0).all() and (cb.encode(x) == 0).all()


def test_residual_encode_with_a_shortlist_equals_the_plain_encode():
    """Every level through the shortlist (groups past their cap still -1) gives encode's codes."""
    torch.manual_seed(0)
    z = torch.randn(S, 300, 16)
    rq = fit(ResidualQuantizer(16, rvq_cfg(levels=2, codebook_size=256), S, [1, 2, 2, 2, 1]), z, 2).eval()
    plain = rq.encode(z)
    rq.shortlist = 16
    assert torch.equal(rq.encode(z), plain)
    assert (plain[[0, 4], :, 1] == -1).all()


# ---------------------------------------------------------------- quantizer dropout


@pytest.mark.parametrize("training", [False, True])
def test_rows_with_k_active_levels_sum_their_first_k_codewords(training):
    levels = 3
    z = one(torch.randn(30, 8) * 2)
    rq = fit(make_rq(levels=levels), z, 3).train(training)
    before = copy.deepcopy(rq)
    active = torch.arange(30) % levels + 1  # 1, 2, 3, 1, ...
    res = rq(z, active)
    for k in range(1, levels + 1):
        rows = active == k
        assert torch.equal(res.quantized[:, rows], before.decode(res.codes[:, rows, :k]))
    if training:
        # Inactive rows stay out of the EMA: a level no row uses only decays.
        size = rq.levels[1].cluster_size.clone()
        decay = rq.levels[1].decay
        warm = min(decay, (1.0 + float(rq.levels[1].updates)) / (10.0 + float(rq.levels[1].updates)))
        rq(z, torch.ones(30, dtype=torch.long))
        torch.testing.assert_close(rq.levels[1].cluster_size, warm * size)


def test_a_level_no_row_uses_on_the_first_batch_still_initialises():
    from src.config import RVQConfig
    from src.models.quantizer import ResidualQuantizer

    rq = ResidualQuantizer(4, RVQConfig(levels=2, codebook_size=8)).train()
    out = rq(torch.randn(1, 10, 4), torch.ones(10, dtype=torch.long))  # level 1 inactive everywhere
    assert bool(rq.levels[1].initted) and out.codes.shape == (1, 10, 2)


def test_streams_are_independent_codebooks():
    """Group g is quantised by codebook g alone: changing one stream's codebook or input
    leaves every other stream's codes untouched."""
    torch.manual_seed(0)
    ms = fit(MultiStreamRVQ(8, rvq_cfg(levels=2)), torch.randn(32, S, 8) * 2, 3).eval()
    z = torch.randn(20, S, 8) * 2
    codes = ms.encode(z)
    z2 = z.clone()
    z2[:, 1] += 5.0  # move the LH inputs only
    ms.rvq.levels[0].embed[3] += 1.0  # and change the B codebook
    codes2 = ms.encode(z2)
    keep = [0, 2, 4]
    assert torch.equal(codes[:, keep], codes2[:, keep])
    assert not torch.equal(codes[:, 1], codes2[:, 1])


def test_cached_code_norms_follow_every_change_of_the_codebook():
    cb = Codebook(4, rvq_cfg(codebook_size=8, init="random"), groups=2).eval()
    x = torch.randn(2, 30, 4)
    fresh = lambda: Codebook.distances(x, cb.embed, cb.embed.pow(2).sum(-1)).argmin(-1)  # noqa: E731
    assert torch.equal(cb.encode(x), fresh())
    cb.embed.mul_(3.0)                                     # in place
    assert torch.equal(cb.encode(x), fresh())
    cb.load_state_dict({**cb.state_dict(), "embed": torch.randn(2, 8, 4)})
    assert torch.equal(cb.encode(x), fresh())


def test_stream_levels_set_each_streams_codes_per_chunk():
    """F and FB code one level, the rest two: their level-1 codes are -1, decode to nothing and
    add nothing to the losses; the other streams are quantised exactly as with uniform levels."""
    per_stream = {"F": 1, "LH": 2, "RH": 2, "B": 2, "FB": 1}
    torch.manual_seed(0)
    z = torch.randn(64, S, 8) * 2
    mixed = fit(MultiStreamRVQ(8, rvq_cfg(levels=2, stream_levels=per_stream)), z, 3).eval()
    uniform = MultiStreamRVQ(8, rvq_cfg(levels=2))
    uniform.load_state_dict(mixed.state_dict())
    uniform.eval()
    codes, full, res = mixed.encode(z), uniform.encode(z), mixed(z)
    assert torch.equal(codes, res.codes)
    assert torch.equal(mixed.decode(codes), res.quantized)
    for s, name in enumerate(kp.STREAM_NAMES):
        if per_stream[name] == 1:
            assert (codes[:, s, 1] == -1).all() and torch.equal(codes[:, s, 0], full[:, s, 0])
            torch.testing.assert_close(res.quantized[:, s], uniform.decode(full[..., :1])[:, s])
        else:
            assert torch.equal(codes[:, s], full[:, s])
    assert rvq_cfg(levels=2, stream_levels=per_stream).codes_per_chunk == 8
    # a stream's level past its cap pulls nothing: the commitment averages the levels it codes
    train = fit(MultiStreamRVQ(8, rvq_cfg(levels=2, stream_levels=per_stream)), z, 1).train()
    out = train(z)
    first = train.rvq.levels[0](train._groups(z))[2]
    torch.testing.assert_close(out.commit_loss[0], first[0])


# ---------------------------------------------------------------- finite scalar quantisation


def fsq_cfg(**overrides) -> RVQConfig:
    values = dict(levels=2, fsq_streams=list(kp.STREAM_NAMES), fsq_levels=[4, 3, 5], codebook_size=60)
    values.update(overrides)
    return rvq_cfg(**values)


@pytest.mark.parametrize("training", [True, False])
def test_fsq_forward_equals_decode_of_its_codes_and_encode(training):
    """The training forward's value is decode(codes) bit for bit, eval encode gives the same
    codes, codes index the grid's product, and a stream past its level cap gets -1."""
    per_stream = {"F": 1, "LH": 2, "RH": 2, "B": 2, "FB": 1}
    torch.manual_seed(0)
    q = MultiStreamRVQ(8, fsq_cfg(stream_levels=per_stream)).train(training)
    z = torch.randn(50, S, 8) * 3
    out = q(z)
    assert q.rvq is None and isinstance(q.fsq, quantizer.ResidualFSQ)
    assert torch.equal(q.decode(out.codes), out.quantized.detach())
    assert torch.equal(q.encode(z), out.codes)
    coded = out.codes[out.codes >= 0]
    assert coded.min() >= 0 and coded.max() < 60 and len(coded.unique()) > 20
    for s, name in enumerate(kp.STREAM_NAMES):
        assert ((out.codes[:, s, 1] == -1).all()) == (per_stream[name] == 1)
    assert (out.commit_loss == 0).all() and (out.usage_loss == 0).all()


def test_fsq_levels_refine_and_gradients_reach_the_input():
    """The second level leaves a smaller residual than the first alone (in the projected space), and
    the rounding is straight-through: the encoder's latent gets a gradient."""
    torch.manual_seed(0)
    q = MultiStreamRVQ(8, fsq_cfg()).train()
    z = (torch.randn(200, S, 8) * 0.5).requires_grad_()
    out = q(z)
    out.quantized.pow(2).sum().backward()
    assert z.grad.abs().sum() > 0 and q.fsq.project_in.grad.abs().sum() > 0
    _, left = q.encode_with_residuals(z.detach())
    assert left[..., 1].mean() < 0.6 * left[..., 0].mean()   # 0.30 against 0.59 on this seed


def test_fsq_counts_unused_codes_for_the_health_report():
    torch.manual_seed(0)
    q = MultiStreamRVQ(8, fsq_cfg()).train()
    q(torch.randn(30, S, 8))
    unused = q.codebook("LH", 0)["unused"]
    assert unused.shape == (60,) and set(unused.unique().tolist()) == {0, 1}
    assert q.codebook("LH", 0)["dead_after"] is None


@pytest.mark.parametrize("fsq_streams", [["F"], ["LH", "B"]])
def test_fsq_and_ema_streams_side_by_side(fsq_streams):
    """Streams on FSQ and on EMA codebooks in one quantiser: each stream's codes are those of
    its own sub-quantiser on its groups, losses are zero on FSQ streams only, decode(encode)
    is the forward, and the health report and residual norms find each stream's state."""
    torch.manual_seed(0)
    z = torch.randn(40, S, 8) * 2
    mixed = fit(MultiStreamRVQ(8, fsq_cfg(fsq_streams=fsq_streams)), z, 2).eval()
    on_fsq = [kp.STREAM_NAMES.index(name) for name in fsq_streams]
    on_ema = [s for s in range(S) if s not in on_fsq]
    out, groups = mixed(z), mixed._groups(z)
    assert torch.equal(out.codes[:, on_fsq], mixed.fsq(groups[on_fsq]).codes.transpose(0, 1))
    assert torch.equal(out.codes[:, on_ema], mixed.rvq(groups[on_ema]).codes.transpose(0, 1))
    assert torch.equal(mixed.encode(z), out.codes)
    assert torch.equal(mixed.decode(out.codes), out.quantized)
    assert (out.commit_loss[on_fsq] == 0).all() and (out.commit_loss[on_ema] > 0).all()
    assert mixed.codebook(fsq_streams[0], 0)["dead_after"] is None
    assert mixed.codebook(kp.STREAM_NAMES[on_ema[-1]], 1)["embed"].shape == (60, 8)
    codes, left = mixed.encode_with_residuals(z)
    assert torch.equal(codes, out.codes) and left.shape == (40, S, 2)
    x = groups[on_ema[-1]]
    direct = (x - mixed.rvq.levels[0].embed[len(on_ema) - 1][out.codes[:, on_ema[-1], 0]]).norm(dim=-1) / x.norm(dim=-1)
    torch.testing.assert_close(left[:, on_ema[-1], 0], direct)
    assert left[..., 1].mean() < left[..., 0].mean()


def test_refit_replaces_the_codebooks_by_residual_kmeans():
    """After a refit the codebooks code the latents they were fitted to far closer than the EMA
    codebooks did, each group keeps its level cap, and the EMA state matches the new codewords."""
    torch.manual_seed(0)
    rq = ResidualQuantizer(8, rvq_cfg(levels=2, codebook_size=16, init="random"), groups=2, group_levels=[2, 1]).eval()
    z = torch.randn(2, 400, 8) * torch.linspace(0.2, 3, 8)
    before = (rq(z).quantized - z).square().mean((1, 2))
    fixed_level1_group1 = rq.levels[1].embed[1].clone()
    rq.refit(z, iters=10)
    out = rq(z)
    after = (out.quantized - z).square().mean((1, 2))
    assert (after < 0.5 * before).all(), (before, after)
    assert torch.equal(rq.levels[1].embed[1], fixed_level1_group1)   # group 1 codes one level only
    assert (out.codes[1, :, 1] == -1).all()
    for level in rq.levels:
        torch.testing.assert_close(level.embed_sum, level.embed * level.cluster_size[..., None])
        assert bool(level.initted) and int(level.unused_rows.sum()) == 0
    assert torch.equal(rq.levels[0].cluster_size.sum(-1), torch.tensor([400.0, 400.0]))


# ----------------------------------------------------------------------------- adaptive depth


@pytest.mark.parametrize("kind,splits", [("ema", 1), ("ema", 2), ("fsq", 1), ("mixed", 1)])
def test_adaptive_depth_stops_where_the_residual_is_small_and_decodes_what_it_kept(kind, splits):
    """With thresholds set, a stream codes level k + 1 of a chunk only while the relative
    residual of its first k levels (encode_with_residuals at full depth) is at least its
    threshold; the kept codes are the full-depth ones, later ones -1 (whole levels across
    split parts); encode and the eval forward agree, the forward's value is decode(codes);
    a stream not named codes every level; training ignores the setting; None turns it off."""
    torch.manual_seed(0)
    cfg = {"ema": rvq_cfg(levels=3, splits=splits), "fsq": fsq_cfg(levels=3),
           "mixed": fsq_cfg(levels=3, fsq_streams=["F", "LH"])}[kind]
    z = torch.randn(300, S, 8) * 2
    ms = fit(MultiStreamRVQ(8, cfg), z, 3).eval()
    full, rel = ms.encode_with_residuals(z)

    def between(v: torch.Tensor) -> float:   # a median off every sample: no row sits on the threshold
        v = v.sort().values
        return float(v[len(v) // 2 - 1: len(v) // 2 + 1].mean())

    thresholds = {"LH": between(rel[:, 1, 0]), "RH": between(rel[:, 2, 1]), "F": 1e9}
    ms.set_depth(thresholds)
    codes = ms.encode(z)
    out = ms(z)
    assert torch.equal(out.codes, codes)
    torch.testing.assert_close(out.quantized, ms.decode(codes))
    kept = (codes >= 0).view(300, S, 3, splits)
    assert (kept.all(-1) | ~kept.any(-1)).all()                   # whole levels only
    depth = kept.all(-1).sum(-1)                                   # (N, S) levels kept
    for s, name in enumerate(kp.STREAM_NAMES):
        t = thresholds.get(name, 0.0)
        below = rel[:, s] < t                                      # (N, levels)
        want = torch.where(below.any(-1), below.int().argmax(-1) + 1, torch.full_like(depth[:, s], 3))
        assert torch.equal(depth[:, s], want), name
        assert torch.equal(codes[:, s][codes[:, s] >= 0], full[:, s][codes[:, s] >= 0])
    assert (depth[:, 0] == 1).all() and (depth[:, 3:] == 3).all()
    assert set(depth[:, 1].tolist()) > {1} and set(depth[:, 2].tolist()) > {2}   # mixed depths: not trivial
    assert (ms.train()(z).codes >= 0).all()                          # training codes every level
    ms.eval().set_depth(None)
    assert (ms.encode(z) >= 0).all()


@pytest.mark.parametrize("kind,splits", [("ema", 1), ("ema", 2), ("fsq face", 1)])
def test_hands_sharing_codes_keep_the_split_with_the_least_residual(kind, splits):
    """hand_codes=4 with 3 levels per hand: every chunk keeps exactly 4 hand codes' worth of
    levels, split (1, 3), (2, 2) or (3, 1), the one that leaves the least squared residual
    over both hands (checked against every split); the kept codes are the full-depth ones;
    the other streams keep every level; encode and the eval forward agree and the forward's
    value is decode(codes); an impossible budget is refused."""
    torch.manual_seed(0)
    cfg = {"ema": rvq_cfg(levels=3, splits=splits), "fsq face": fsq_cfg(levels=3, fsq_streams=["F"])}[kind]
    z = torch.randn(200, S, 8) * 2
    ms = fit(MultiStreamRVQ(8, cfg), z, 3).eval()
    full = ms.encode(z)
    with pytest.raises(ValueError, match="needs the hands on EMA codebooks"):
        MultiStreamRVQ(8, fsq_cfg(levels=3, fsq_streams=["F", "LH"])).set_depth(None, hand_codes=4)
    ms.set_depth(None, hand_codes=4)
    codes = ms.encode(z)
    out = ms(z)
    assert torch.equal(out.codes, codes)
    torch.testing.assert_close(out.quantized, ms.decode(codes))
    lh, rh = kp.STREAM_NAMES.index("LH"), kp.STREAM_NAMES.index("RH")
    depth = (codes >= 0).sum(-1) // splits                            # (N, S) levels kept
    assert ((depth[:, lh] + depth[:, rh]) == 4).all()
    assert {(1, 3), (3, 1), (2, 2)} == set(zip(depth[:, lh].tolist(), depth[:, rh].tolist()))
    others = [s for s in range(S) if s not in (lh, rh)]
    assert torch.equal(codes[:, others], full[:, others])
    assert torch.equal(codes[codes >= 0], full[codes >= 0])

    if kind == "ema":   # the latent itself is the target: the residual is z - decode, computed here
        def left(a: int, b: int) -> torch.Tensor:
            cut = full.clone()
            cut[:, lh, a * splits:], cut[:, rh, b * splits:] = -1, -1
            return (z - ms.decode(cut))[:, [lh, rh]].square().sum((1, 2))

        every = torch.stack([left(a, b) for a, b in ((1, 3), (2, 2), (3, 1))], -1)
        kept = every.gather(1, (depth[:, lh] - 1)[:, None]).squeeze(1)   # row's split is (a, 4 - a)
        torch.testing.assert_close(kept, every.min(-1).values)
    with pytest.raises(ValueError, match="hand_codes=7"):
        ms.set_depth(None, hand_codes=7)


def test_hands_train_with_the_split_they_are_coded_at():
    """model.rvq.hand_codes: the training forward keeps the hands' levels as export.hand_codes
    would (4 between both hands), its value is decode(codes) for the hands, the gradient to
    the latents is still the identity, and evaluation decodes the same split by default."""
    torch.manual_seed(0)
    ms = MultiStreamRVQ(8, rvq_cfg(levels=3, hand_codes=4)).train()
    z = (torch.randn(64, S, 8) * 2).requires_grad_()
    out = ms(z)
    lh, rh = kp.STREAM_NAMES.index("LH"), kp.STREAM_NAMES.index("RH")
    assert (((out.codes[:, lh] >= 0).sum(-1) + (out.codes[:, rh] >= 0).sum(-1)) == 4).all()
    assert (out.codes[:, [0, 3, 4]] >= 0).all()
    torch.testing.assert_close(out.quantized[:, [lh, rh]], ms.decode(out.codes)[:, [lh, rh]])
    out.quantized.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    ms.eval()
    assert torch.equal(ms(z.detach()).codes, ms.encode(z.detach()))
    assert (((ms.encode(z.detach())[:, [lh, rh]] >= 0).sum((1, 2))) == 4).all()
