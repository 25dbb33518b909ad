"""The CUDA paths of training and inference, run where a GPU is available (skipped elsewhere;
the two-GPU NCCL test is in test_ddp.py)."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture
def trainer(synth_root, tmp_path):
    from src import distributed
    from src.train.loop import Trainer

    cfg = tiny_config(synth_root, tmp_path, "train.device=cuda", "train.amp=true", "train.epochs=1",
                      "train.token_samples_every=0")
    return Trainer(cfg, distributed.setup("cuda"))


def test_a_training_step_keeps_every_tensor_on_the_gpu(trainer):
    """Model, codebook buffers, batch, losses and gradients on the GPU, the codebooks updated
    there by the step, the quantiser's output fp32 under bf16 autocast."""
    from src.train.loop import train_step

    model = trainer.model
    before = model.quantizer.rvq.levels[0].embed.clone()
    batch = next(iter(trainer.train_loader)).to(trainer.device)
    assert all(t.is_cuda for t in (batch.x, batch.conf, batch.frame_mask, batch.chunk_mask, batch.centres))
    grads = {}
    for name, p in model.named_parameters():
        p.register_hook(lambda g, name=name: grads.setdefault(name, g.device.type))
    losses, grad_norm, n = train_step(trainer.forward_model, model, trainer.optimizer, trainer.scaler, batch,
                                      trainer.cfg)
    assert n > 0 and torch.isfinite(losses["total"]) and grad_norm.is_cuda
    assert all(v.is_cuda for v in losses.values())
    assert grads and set(grads.values()) == {"cuda"}
    assert all(p.is_cuda for p in model.parameters()) and all(b.is_cuda for b in model.buffers())
    assert not torch.equal(model.quantizer.rvq.levels[0].embed, before), "the EMA update did not run"
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        z = model.encode_latent(batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask])
        assert z.dtype == torch.bfloat16
        assert model.quantizer(z).quantized.dtype == torch.float32


def test_gpu_codes_match_the_cpu_codes_of_the_same_weights(trainer):
    """The same weights code the same chunks alike on GPU and CPU (fp32; a few codes may differ
    where two codewords are nearly as close)."""
    model = trainer.model.eval()
    batch = next(iter(trainer.val_loader))
    x, conf = batch.x[batch.chunk_mask], batch.conf[batch.chunk_mask]
    with torch.no_grad():
        on_gpu = model.encode(x.cuda(), conf.cuda()).cpu()
        on_cpu = model.cpu().encode(x, conf)
    assert float((on_gpu == on_cpu).float().mean()) >= 0.98
