"""Invariants of the tokenizer and its losses: shapes and gradients for every stream, the
pure encode/decode paths, chunk and stream independence, standardisation, a short
training that learns, and what the loss terms count (tiny model, CPU, seconds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from src.config import DataConfig, LossConfig, ModelConfig, RVQConfig
from src.data import keypoints as kp
from src.data.dataset import collate
from src.data.sample import make_sample
from src.tools.synth import synth_sequence
from src.losses import compute_losses
from src.models.quantizer import QuantizedResult
from src.models.stitch import stitch_chunks
from src.models.tokenizer import SignTokenizer, TokenizerOutput

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: a second thread only adds contention

P, S, L = kp.NUM_STREAM_POINTS, len(kp.STREAMS), 4
LEVELS, K, D = 2, 32, 16
BETA = 0.25


def tiny_cfg(**overrides) -> ModelConfig:
    values = dict(width=32, heads=2, latent_dim=D, enc_layers=1, dec_layers=1, type_dim=8,
                  rvq=RVQConfig(codebook_size=K, levels=LEVELS, kmeans_iters=3,
                                stream_levels={name: LEVELS for name in kp.STREAM_NAMES}))
    return ModelConfig(**{**values, **overrides})


def make_model(seed: int = 0, chunk_len: int = L, **overrides) -> SignTokenizer:
    torch.manual_seed(seed)
    return SignTokenizer(tiny_cfg(**overrides), chunk_len)


def inputs(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, L, P, 2, generator=g)
    observed = torch.rand(n, L, P, generator=g) < 0.9
    return x, observed


def initialised(model: SignTokenizer, x: torch.Tensor, observed: torch.Tensor) -> SignTokenizer:
    """One training forward (codebook data init), then eval mode."""
    model.train()(x, observed)
    return model.eval()


def stream_index(name: str) -> int:
    return kp.STREAM_NAMES.index(name)


# ---------------------------------------------------------------- shapes and gradients

MIXED_POOL = {"F": "attention", "LH": "flatten", "RH": "flatten", "B": "mean", "FB": "attention"}



@pytest.mark.parametrize("only_recon, pool, linear_path", [
    (False, "attention", False), (True, "attention", False), (False, MIXED_POOL, False), (True, MIXED_POOL, True)])
def test_forward_backward_shapes_and_every_parameter_gets_a_gradient(only_recon, pool, linear_path):
    """With the reconstruction terms alone the encoder still learns: the straight-through
    path carries the decoder's gradient across the quantiser."""
    model = make_model(pool=pool, linear_path=linear_path)
    x, observed = inputs()
    out = model.train()(x, observed)
    assert out.recon.shape == (6, L, P, 2)
    assert out.z.shape == (6, S, D)
    assert out.vq.quantized.shape == (6, S, D)
    assert out.vq.codes.shape == (6, S, LEVELS)
    chunk_mask = torch.ones(2, 3, dtype=torch.bool)  # 2 sequences of 3 chunks = 6 rows
    cfg = LossConfig(lambda_vq=0.0, lambda_usage=0.0) if only_recon else LossConfig()
    losses = compute_losses(out, x, observed, chunk_mask, cfg, BETA)
    losses["total"].backward()
    names = [n for n, _ in model.named_parameters()]
    for s in kp.STREAM_NAMES:  # every per-stream input projection and head is among them
        assert f"encoder.inputs.{s}.weight" in names and f"decoder.heads.{s}.weight" in names
        assert (f"encoder.linear.{s}.weight" in names) == (f"decoder.linear.{s}.weight" in names) == linear_path
    assert any(name.startswith("quantizer.fsq.") for name in names)   # the face's FSQ projections
    for name, p in model.named_parameters():
        assert name.startswith(("encoder.", "decoder.", "quantizer.fsq."))
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("type_embedding", ["add", "concat"])
@pytest.mark.parametrize("pool", ["attention", "mean", "flatten", MIXED_POOL])
def test_type_embedding_and_pool_options(type_embedding, pool):
    model = make_model(type_embedding=type_embedding, pool=pool)
    x, observed = inputs(3)
    out = model(x, observed)
    assert out.recon.shape == (3, L, P, 2) and out.z.shape == (3, S, D)
    assert out.vq.codes.shape == (3, S, LEVELS)


@pytest.mark.parametrize("option, value", [("type_embedding", "sum"), ("pool", "max"),
                                           ("pool", {**MIXED_POOL, "B": "max"}), ("pool", {"LH": "flatten"})])
def test_invalid_model_option_raises_naming_it(option, value):
    with pytest.raises(ValueError, match=f"model.{option}"):
        make_model(**{option: value})


def test_concatenated_type_must_leave_room_for_the_input():
    # type_dim >= width would leave the per-stream projections no channels at all.
    with pytest.raises(ValueError, match="model.type_dim"):
        make_model(type_embedding="concat", type_dim=32)


# ---------------------------------------------------------------- pure inference paths


def test_decode_codes_of_encode_equals_eval_forward_bit_for_bit():
    x, observed = inputs()
    model = make_model()
    g = torch.Generator().manual_seed(1)
    model.set_standardisation(torch.randn(P, 2, generator=g), torch.rand(P, 2, generator=g) + 0.5)
    model = initialised(model, x, observed)
    out = model(x, observed)
    codes = model.encode(x, observed)
    assert torch.equal(codes, out.vq.codes)
    quantized = model.decode_codes(codes)
    assert torch.equal(quantized, out.vq.quantized)
    with torch.no_grad():
        assert torch.equal(model.decode(quantized), out.recon)


def test_chunks_are_independent():
    x, observed = inputs()
    model = initialised(make_model(), x, observed)
    changed = x.clone()
    changed[2] += torch.randn(L, P, 2)
    with torch.no_grad():
        a, b = model(x, observed), model(changed, observed)
    others = torch.arange(6) != 2
    assert not torch.equal(a.z[2], b.z[2])
    assert not torch.equal(a.recon[2], b.recon[2])
    assert torch.equal(a.z[others], b.z[others])
    assert torch.equal(a.vq.codes[others], b.vq.codes[others])
    assert torch.equal(a.recon[others], b.recon[others])


@pytest.mark.parametrize("pool, linear_path", [("attention", False), (MIXED_POOL, False), (MIXED_POOL, True)])
def test_each_stream_latent_sees_only_its_own_points(pool, linear_path):
    x, observed = inputs()
    model = initialised(make_model(pool=pool, linear_path=linear_path), x, observed)
    left_hand = torch.zeros(P, dtype=torch.bool)  # the signer's left hand, in every stream holding it
    for s in kp.STREAMS:
        for i, row in enumerate(s.rows):
            if row in kp.LEFT_HAND:
                left_hand[kp.STREAM_SLICES[s.name].start + i] = True
    assert int(left_hand.sum()) == 2 * len(kp.LEFT_HAND)
    changed = x.clone()
    changed[:, :, left_hand] += torch.randn(6, L, int(left_hand.sum()), 2)
    with torch.no_grad():
        a, b = model.encode_latent(x, observed), model.encode_latent(changed, observed)
    for name in kp.STREAM_NAMES:
        same = torch.equal(a[:, stream_index(name)], b[:, stream_index(name)])
        assert same == (name not in ("LH", "FB")), name


@pytest.mark.parametrize("pool, linear_path, fb_from_parts", [("flatten", False, False), (MIXED_POOL, False, False),
                                                             (MIXED_POOL, True, False), (MIXED_POOL, True, True)])
def test_each_streams_decoded_points_come_from_its_own_latent_only(pool, linear_path, fb_from_parts):
    """... and, with ``fb_from_parts``, the FB points placed from its points (arms and hands)."""
    model = make_model(pool=pool, linear_path=linear_path, fb_from_parts=fb_from_parts).eval()
    fb, body, hand = kp.parts_in_full_body()
    z = torch.randn(3, S, D)
    with torch.no_grad():
        base = model.decode(z)
        for i, name in enumerate(kp.STREAM_NAMES):
            changed = z.clone()
            changed[:, i] += 1.0
            moved = (model.decode(changed) != base).any(-1).any(1).any(0)  # (P,) points that changed
            own = torch.zeros(P, dtype=torch.bool)
            own[kp.STREAM_SLICES[name]] = True
            if fb_from_parts:
                sl = kp.STREAM_SLICES[name]
                own[fb[((body >= sl.start) & (body < sl.stop)) | ((hand >= sl.start) & (hand < sl.stop))]] = True
            assert torch.equal(moved, own), name


def test_full_body_starts_from_the_decoded_parts():
    """With ``fb_from_parts`` FB's arm and hand points are the decoded body's elbows and wrists,
    and each hand's decoded local pose at the body's wrist, plus FB's own decoded offset from
    its mean pose; every other point decodes as without."""
    plain, placed = make_model(fb_from_parts=False), make_model(fb_from_parts=True)
    placed.load_state_dict(plain.state_dict())
    mean = torch.randn(P, 2)
    for m in (plain, placed):
        m.set_standardisation(mean, torch.ones(P, 2))
    q = torch.randn(3, S, D)
    before, after = plain.eval().decode(q), placed.eval().decode(q)
    fb, body, hand = (torch.from_numpy(v) for v in kp.parts_in_full_body())
    others = torch.ones(P, dtype=torch.bool)
    others[fb] = False
    assert torch.equal(after[:, :, others], before[:, :, others])
    parts = before[:, :, body] + torch.where(hand[:, None] >= 0, before[:, :, hand.clamp_min(0)], 0.0)
    torch.testing.assert_close(after[:, :, fb], before[:, :, fb] - mean[fb] + parts)
    left_wrist = kp.STREAM_SLICES["B"].start + kp.STREAM_BY_NAME["B"].rows.index(kp.L_WRIST)
    assert body[hand == kp.STREAM_SLICES["LH"].start].item() == left_wrist   # the signer's left on the left


def test_full_body_loss_does_not_train_the_parts_it_starts_from():
    """The parts are placed detached: a loss on FB alone gives the body's and hands' latents no
    gradient (the decoder's transformer sees each stream on its own)."""
    model = make_model(fb_from_parts=True).train()
    q = torch.randn(2, S, D, requires_grad=True)
    model.decode(q)[:, :, kp.STREAM_SLICES["FB"]].square().sum().backward()
    for name in ("LH", "RH", "B"):
        assert q.grad[:, stream_index(name)].abs().max() == 0, name
    assert q.grad[:, stream_index("FB")].abs().max() > 0


# ---------------------------------------------------------------- standardisation


def test_standardisation_maps_to_and_from_original_units():
    g = torch.Generator().manual_seed(1)
    mean, std = torch.randn(P, 2, generator=g), torch.rand(P, 2, generator=g) + 0.5
    x, observed = inputs(3)
    # FB on its own: placed parts would start FB's arms and hands elsewhere than its mean pose
    plain, scaled = make_model(seed=0, fb_from_parts=False), make_model(seed=0, fb_from_parts=False)
    scaled.set_standardisation(mean, std)
    plain.eval(), scaled.eval()
    with torch.no_grad():
        torch.testing.assert_close(scaled.encode_latent(x, observed),
                                   plain.encode_latent((x - mean) / std, observed))
        for head in scaled.decoder.heads.values():
            head.weight.zero_()
            head.bias.zero_()
        recon = scaled(x, observed).recon
    assert torch.equal(recon, mean.expand_as(recon))  # decoder output 0 is the mean pose
    state = scaled.state_dict()  # saved with the weights
    assert torch.equal(state["point_mean"], mean) and torch.equal(state["point_std"], std)


# ---------------------------------------------------------------- training


def synth_batch(seed: int, chunk_len: int = 10, frames: int = 40, num: int = 2):
    rng = np.random.default_rng(seed)
    cfg = DataConfig(chunk_len=chunk_len)
    samples = []
    for i in range(num):
        raw, _ = synth_sequence(rng, frames)
        samples.append({**make_sample(raw, cfg), "name": f"seq{i}"})
    return collate(samples)


def test_short_training_lowers_the_reconstruction_loss():
    batch = synth_batch(0)
    x, conf = batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask]
    model = make_model(seed=0, chunk_len=10).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = LossConfig()

    def losses() -> dict[str, torch.Tensor]:
        return compute_losses(model(x, conf), x, conf, batch.chunk_mask, cfg, BETA)

    start = None
    for _ in range(60):
        step = losses()
        start = step["recon"].item() if start is None else start
        opt.zero_grad(set_to_none=True)
        step["total"].backward()
        opt.step()
    with torch.no_grad():
        end = losses()["recon"].item()
    # Seeds 0-7 ended at 0.02-0.11 of the start; 0.2 leaves a margin.
    assert end < 0.2 * start, (start, end)


# ---------------------------------------------------------------- losses


def fake_output(target: torch.Tensor) -> TokenizerOutput:
    """A perfect reconstruction and zero quantiser terms, to edit one thing at a time."""
    n = target.shape[0]
    z = torch.zeros(n, S, D)
    vq = QuantizedResult(z, torch.zeros(n, S, LEVELS, dtype=torch.long), torch.zeros(S), torch.zeros(S))
    return TokenizerOutput(target.clone(), z, vq)


def loss_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(6, L, P, 2, generator=g)
    conf = torch.rand(6, L, P, generator=g) < 0.8
    return target, conf, torch.ones(2, 3, dtype=torch.bool)


def test_recon_ignores_unobserved_points_and_part_centres():
    target, conf, chunk_mask = loss_inputs()
    out = fake_output(target)
    out.recon += 0.3 * torch.randn_like(target)
    base = compute_losses(out, target, conf, chunk_mask, LossConfig(), BETA)
    assert base["recon"] > 0

    hidden = (~conf).nonzero()[:20]
    moved = fake_output(target)
    moved.recon = out.recon.clone()
    moved.recon[hidden[:, 0], hidden[:, 1], hidden[:, 2]] += 5.0
    after = compute_losses(moved, target, conf, chunk_mask, LossConfig(), BETA)
    assert torch.equal(after["recon"], base["recon"]) and torch.equal(after["total"], base["total"])

    centres = [kp.STREAM_SLICES[s.name].start + s.rows.index(s.centre[0]) for s in kp.STREAMS
               if len(s.centre) == 1]
    assert sorted(np.flatnonzero(~kp.SCORED_POINTS).tolist()) == sorted(centres)
    conf_all = torch.ones_like(conf)
    base = compute_losses(out, target, conf_all, chunk_mask, LossConfig(), BETA)
    moved.recon = out.recon.clone()
    moved.recon[:, :, centres] += 5.0
    after = compute_losses(moved, target, conf_all, chunk_mask, LossConfig(), BETA)
    assert torch.equal(after["recon"], base["recon"])

    # ...while the same change at an observed, scored point does count.
    point = kp.STREAM_SLICES["LH"].start + 5
    moved.recon = out.recon.clone()
    moved.recon[:, :, point] += 5.0
    after = compute_losses(moved, target, conf_all, chunk_mask, LossConfig(), BETA)
    assert after["recon"] > base["recon"]


def test_per_stream_terms_are_each_streams_own_masked_mean():
    target, conf, chunk_mask = loss_inputs()
    out = fake_output(target)
    out.recon += 0.3 * torch.randn_like(target)
    cfg = LossConfig(huber_delta=1.0)
    losses = compute_losses(out, target, conf, chunk_mask, cfg, BETA)
    err = torch.nn.functional.huber_loss(out.recon, target, reduction="none", delta=1.0).sum(-1)
    scored = conf & torch.from_numpy(kp.SCORED_POINTS)
    for term in ("recon", "temporal", "commit", "usage"):
        assert all(f"{term}/{s}" in losses for s in kp.STREAM_NAMES)
    per_stream = []
    for name, sl in kp.STREAM_SLICES.items():
        expected = err[..., sl][scored[..., sl]].mean()
        torch.testing.assert_close(losses[f"recon/{name}"], expected)
        per_stream.append(expected)
    torch.testing.assert_close(losses["recon"], torch.stack(per_stream).mean())  # equal weights

    # Changing one stream's prediction changes that stream's term only.
    out.recon[:, :, kp.STREAM_SLICES["RH"]] += 1.0
    after = compute_losses(out, target, conf, chunk_mask, cfg, BETA)
    for name in kp.STREAM_NAMES:
        assert torch.equal(after[f"recon/{name}"], losses[f"recon/{name}"]) == (name != "RH"), name


def test_velocity_term_is_zero_on_truth_and_grows_with_a_border_jump():
    target, conf, chunk_mask = loss_inputs()
    cfg = LossConfig(temporal_mode="velocity")
    exact = compute_losses(fake_output(target), target, conf, chunk_mask, cfg, BETA)
    assert exact["temporal"] == 0 and exact["recon"] == 0
    assert all(exact[f"temporal/{s}"] == 0 for s in kp.STREAM_NAMES)

    values = []
    for jump in (0.1, 1.0):
        out = fake_output(target)
        out.recon[1] += jump  # a whole chunk shifted: motion inside it unchanged, its borders jump
        values.append(compute_losses(out, target, conf, chunk_mask, cfg, BETA)["temporal"])
    assert 0 < values[0] < values[1]

    out = fake_output(target)
    out.recon[3:] += 1.0  # the whole second sequence: no border inside a sequence jumps
    assert compute_losses(out, target, conf, chunk_mask, cfg, BETA)["temporal"] < 1e-10  # rounding only

    with pytest.raises(ValueError, match="loss.temporal_mode"):
        compute_losses(out, target, conf, chunk_mask, LossConfig(temporal_mode="accel"), BETA)


def test_stitched_losses_score_the_stitched_sequence_and_reach_every_chunk():
    target, conf, chunk_mask = loss_inputs()
    out = fake_output(target)
    out.recon = (target + 0.3 * torch.randn_like(target)).requires_grad_()
    stitched = compute_losses(out, target, conf, chunk_mask, LossConfig(), BETA, stitch=True)
    by_hand = fake_output(target)
    by_hand.recon = stitch_chunks(out.recon, chunk_mask)
    expected = compute_losses(by_hand, target, conf, chunk_mask, LossConfig(), BETA)
    for term in ("recon", "temporal"):
        torch.testing.assert_close(stitched[term], expected[term])
    assert not torch.allclose(stitched["recon"], compute_losses(out, target, conf, chunk_mask, LossConfig(), BETA)["recon"])
    stitched["total"].backward()
    assert (out.recon.grad.flatten(1).abs().sum(1) > 0).all()


def _chunked_line(num_chunks: int, length: int, points: int = 3) -> torch.Tensor:
    """A point moving on a straight line at constant speed, cut into (C, L, P, 2) chunks."""
    t = torch.arange(num_chunks * length, dtype=torch.float32)
    line = torch.stack([0.5 * t, -0.25 * t], -1)[:, None].expand(-1, points, 2)
    return line.reshape(num_chunks, length, points, 2).clone()


def test_stitching_leaves_a_smooth_sequence_unchanged():
    chunks = _chunked_line(4, 10)
    assert torch.allclose(stitch_chunks(chunks, torch.ones(1, 4, dtype=torch.bool)), chunks, atol=1e-5)


def test_stitching_closes_border_gaps_and_keeps_chunk_middles():
    truth = _chunked_line(4, 10)
    offsets = torch.tensor([0.0, 3.0, -2.0, 5.0])[:, None, None, None]
    stitched = stitch_chunks(truth + offsets, torch.ones(1, 4, dtype=torch.bool))
    timeline = stitched.reshape(40, 3, 2)
    steps = timeline[1:] - timeline[:-1]
    border = torch.arange(10, 40, 10)
    # Across each border the step is the line's own step again (the gap is gone) ...
    assert torch.allclose(steps[border - 1], torch.tensor([0.5, -0.25]).expand(3, 3, 2), atol=1e-5)
    # ... while a correction stays in the half chunk beside its border: the first chunk's
    # first half and the last chunk's second half keep their decoded frames.
    assert torch.equal(stitched[0, :5], (truth + offsets)[0, :5])
    assert torch.equal(stitched[3, 5:], (truth + offsets)[3, 5:])
    assert not torch.allclose(stitched[1, :5], (truth + offsets)[1, :5])


def test_stitching_never_crosses_from_one_sequence_into_the_next():
    # Two sequences of 2 and 1 chunks in one batch; their rows lie next to each other.
    mask = torch.tensor([[True, True], [True, False]])
    rows = _chunked_line(3, 10) + torch.tensor([0.0, 4.0, 50.0])[:, None, None, None]
    stitched = stitch_chunks(rows, mask)
    assert torch.equal(stitched[2], rows[2])                   # the lone chunk is untouched
    assert not torch.allclose(stitched[1], rows[1])            # the pair's border was stitched
    assert torch.equal(stitched[:2], stitch_chunks(rows[:2], mask[:1]))
