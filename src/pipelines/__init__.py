"""Whole jobs built from the layers below: token export, the speed bench, the demo, the
rate-distortion sweep, the prefix-LM proxy and the recognition probe (docs/code_map.md)."""
