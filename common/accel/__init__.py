"""Faster inference with the same maps: BatchNorm folding, merged head, bf16 and
mixed-precision attention, fused edge gates, Winograd, packed convolutions, int8 and
its calibration cache."""
