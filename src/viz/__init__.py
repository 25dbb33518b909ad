"""Plots and videos: skeleton renders of poses, token timelines, codebook usage."""
