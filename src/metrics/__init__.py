"""Reconstruction, temporal smoothness and codebook health metrics."""
