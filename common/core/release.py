"""Numbers fixed by the official release, each with one home.

Why: the input size, the tiling stride and the 8-bit map levels appear in inference,
evaluation, the benchmark and the server; a change in one place only would make their
numbers disagree silently.
"""

from __future__ import annotations

RELEASE_SIZE = 512  # the release's network input side (and our tile side)
TILE_STRIDE = 384  # overlap of full-resolution tiles: a quarter of a tile
MAP_LEVELS = 256  # the release writes maps as floor(255·p): 256 levels
