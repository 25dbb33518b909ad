"""The temporal-context model (``model.context: previous``): closed loop, causality, streaming
steps and training passes (tiny model, CPU, seconds)."""
from __future__ import annotations

import pytest
import torch

from src.data import keypoints as kp
from src.models.tokenizer import Context, SignTokenizer, first_rows
from tests.test_model import L, P, make_model

pytestmark = pytest.mark.usefixtures("one_thread")


def batch(lengths: tuple[int, ...] = (3, 1, 4), seed: int = 0):
    """Valid-chunk rows of sequences with ``lengths`` chunks, a smooth random walk each."""
    g = torch.Generator().manual_seed(seed)
    c = max(lengths)
    chunk_mask = torch.arange(c)[None, :] < torch.tensor(lengths)[:, None]
    walk = torch.randn(len(lengths), c * L, P, 2, generator=g).mul(0.1).cumsum(1)
    x = walk.view(len(lengths), c, L, P, 2)[chunk_mask]
    observed = torch.rand(x.shape[:3], generator=g) < 0.9
    return x, observed, chunk_mask


def context_model(seed: int = 0, **overrides) -> SignTokenizer:
    model = make_model(seed, context="previous", **overrides)
    g = torch.Generator().manual_seed(seed + 1)
    model.set_standardisation(torch.randn(P, 2, generator=g) * 0.1, torch.rand(P, 2, generator=g) + 0.5,
                              torch.rand(P, 2, generator=g) * 0.2 + 0.1)
    x, observed, chunk_mask = batch(seed=seed + 2)
    model.train()(x, observed, chunk_mask)  # codebook data init
    return model.eval()


def test_first_rows_marks_each_sequences_first_chunk():
    chunk_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    assert first_rows(chunk_mask).tolist() == [True, False, False, True, True, False]


@pytest.mark.parametrize("lengths", [(4,), (3, 1, 4)])
def test_closed_loop_equals_streaming_steps(lengths):
    """Eval forward, ``tokenize`` and chunk-by-chunk ``step`` calls carrying the decoded last
    frame give the same codes and poses: what streaming emits is what evaluation scores.
    Bit for bit for one sequence; over a batch the matrix products round differently."""
    model = context_model()
    x, observed, chunk_mask = batch(lengths)
    out = model(x, observed, chunk_mask)
    codes, residuals, recon = model.tokenize(x, observed, chunk_mask)
    assert torch.equal(codes, out.vq.codes) and torch.equal(recon, out.recon)
    assert residuals.shape == codes.shape[:2] + (model.cfg.rvq.levels,)
    row = 0
    for n in chunk_mask.sum(1).tolist():
        context = None
        for t in range(n):
            step_codes, step_recon = model.step(x[row:row + 1], observed[row:row + 1], context)
            assert torch.equal(step_codes[0], codes[row])
            if len(lengths) == 1:
                assert torch.equal(step_recon[0], recon[row])
            torch.testing.assert_close(step_recon[0], recon[row])
            context = step_recon[:, -1]
            row += 1


def test_codes_depend_on_the_past_only():
    model = context_model()
    x, observed, chunk_mask = batch(lengths=(4,))
    before = model.tokenize(x, observed, chunk_mask)[0]
    changed = x.clone()
    changed[2:] += 1.0  # a different future from chunk 2 on
    after = model.tokenize(changed, observed, chunk_mask)[0]
    assert torch.equal(after[:2], before[:2]) and not torch.equal(after[2:], before[2:])


def test_context_changes_what_a_chunk_is_coded_from():
    """The same chunk after two different decoded pasts: the model sees the context."""
    model = context_model()
    x, observed, _ = batch(lengths=(1,))
    _, a = model.step(x, observed, None)
    _, b = model.step(x, observed, x[:, -1] + 0.5)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="step or tokenize"):
        model.encode(x, observed)


def test_only_the_context_streams_see_the_context():
    """``model.context_streams: [B]``: a different decoded past changes the body's input and
    nothing else; the other streams are coded as a first chunk is (from the mean pose)."""
    model = context_model(context_streams=["B"])
    assert list(model.context_in) == ["B"]
    x, observed, _ = batch(lengths=(1,))
    z = [model.encode_latent(x, observed, Context(ref, torch.tensor([first])))
         for ref, first in ((x[:, -1], True), (x[:, -1] + 0.5, False), (x[:, -1] - 0.3, False))]
    body = kp.STREAM_NAMES.index("B")
    others = [s for s in range(len(kp.STREAM_NAMES)) if s != body]
    assert torch.equal(z[0][:, others], z[1][:, others]) and torch.equal(z[1][:, others], z[2][:, others])
    assert not torch.equal(z[1][:, body], z[2][:, body])


def test_training_passes_update_the_codebooks_once_and_carry_gradients():
    model = context_model()
    model.train()
    x, observed, chunk_mask = batch()
    before = int(model.quantizer.rvq.levels[0].updates)
    out = model(x, observed, chunk_mask)
    assert int(model.quantizer.rvq.levels[0].updates) == before + 1  # the no-gradient passes do not update
    out.recon.pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[f"context_in.{s}.weight"] is not None and grads[f"context_in.{s}.weight"].abs().sum() > 0
               for s in kp.STREAM_NAMES)
    with pytest.raises(ValueError, match="chunk mask"):
        model(x, observed)
