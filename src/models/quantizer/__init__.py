"""Residual vector quantisation with EMA codebooks, nested as in audiocraft's core_vq:

``Codebook`` (one level: EMA, data init, dead-code restart) -> ``ResidualQuantizer``
(levels) -> ``MultiStreamRVQ`` (the five streams F/LH/RH/B/FB).

Each stream has its own codebooks and id space. They are stored as a leading group axis
of each level's buffers (as vector-quantize-pytorch's grouped codebooks), so one level
of all streams is one batched matmul rather than five small ones.

All codebook state lives in registered buffers, so ``state_dict()`` is the whole
resumable state. Under torch.distributed the per-code counts and sums are all-reduced
inside the codebook before the EMA update, and dead-code replacements are drawn on rank 0
and broadcast, so every rank holds the same codebooks after every step.

Modules: ``base`` (the ``Quantizer`` interface, shared pieces), ``kernels`` (CPU kernels),
``codebook``, ``residual``, ``fsq``, ``multistream``.
"""
from src.models.quantizer.base import QuantizedResult, Quantizer
from src.models.quantizer.codebook import Codebook, kmeans, sq_distances
from src.models.quantizer.fsq import ResidualFSQ
from src.models.quantizer.multistream import MultiStreamRVQ
from src.models.quantizer.residual import ResidualQuantizer

__all__ = ["Codebook", "MultiStreamRVQ", "QuantizedResult", "Quantizer", "ResidualFSQ", "ResidualQuantizer",
           "kmeans", "sq_distances"]
