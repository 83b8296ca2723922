"""Tiled VAE decode and encode in numpy: diffusers' `AutoencoderKL.tiled_decode` / `_tiled_encode` around any
function that runs the VAE on one tile.

A big image's decoder activations (SD3's VAE: 128 channels at full resolution, 2 GB per feature map at 2048x2048)
need not fit at once: the latents are cut into overlapping tiles of `tile_latent_min_size` cells, each tile is
decoded alone, and each tile's first rows and columns are blended linearly with the tile above and the tile to its
left (`blend_v`, `blend_h`) before the overlap is cropped off. Encoding cuts the pixels the same way. Tile sizes come
from the VAE's `config.json` (`sample_size` pixels, as diffusers reads them), the overlap is diffusers' 0.25, and
the result equals diffusers' tiled result (tests/test_vae_tiling.py) wherever diffusers' is right: for an overlap
of a whole number of latent cells. For other overlaps (0.3 of a 16-cell tile, say) the crop here follows the
stride, so the output always has the size asked for. Only the previous row of tiles is kept.

Imports numpy and the layout.
"""

from dataclasses import dataclass
from itertools import count
from typing import Callable

import numpy as np

from ..core.layout import vae_scale_factor

TILE_OVERLAP_FACTOR = 0.25  # diffusers' AutoencoderKL.tile_overlap_factor


def blend_v(a: np.ndarray, b: np.ndarray, blend_extent: int) -> np.ndarray:
    """`b`'s first `blend_extent` rows faded in from `a`'s last ones (in place; returns `b`)."""
    # Adapted from diffusers AutoencoderKL.blend_v (vectorized; the same float32 weights)
    blend_extent = min(a.shape[2], b.shape[2], blend_extent)
    ramp = np.arange(blend_extent) / max(blend_extent, 1)
    keep_a, keep_b = (1 - ramp).astype(np.float32)[:, None], ramp.astype(np.float32)[:, None]  # (blend_extent, 1)
    b[:, :, :blend_extent, :] = a[:, :, a.shape[2] - blend_extent :, :] * keep_a + b[:, :, :blend_extent, :] * keep_b
    return b


def blend_h(a: np.ndarray, b: np.ndarray, blend_extent: int) -> np.ndarray:
    """`b`'s first `blend_extent` columns faded in from `a`'s last ones (in place; returns `b`)."""
    # Adapted from diffusers AutoencoderKL.blend_h
    blend_extent = min(a.shape[3], b.shape[3], blend_extent)
    ramp = np.arange(blend_extent) / max(blend_extent, 1)
    keep_a, keep_b = (1 - ramp).astype(np.float32), ramp.astype(np.float32)  # (blend_extent,)
    b[:, :, :, :blend_extent] = a[:, :, :, a.shape[3] - blend_extent :] * keep_a + b[:, :, :, :blend_extent] * keep_b
    return b


def tiled(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, *, tile: int, stride: int, output_tile: int, output_stride: int) -> np.ndarray:
    """`run` on `tile` x `tile` windows of (B, C, H, W) `inputs`, one every `stride` cells; each output (`output_tile`
    x `output_tile`, `output_stride` per `stride`) blended with its upper and left neighbours over their overlap,
    cropped to its first `output_stride` rows and columns (the part no later tile covers), and all put together: an
    output of exactly H x W input cells' worth for any stride."""
    # Adapted from diffusers AutoencoderKL.tiled_decode: one row of tiles at a time instead of all of them, and the
    # crop and blend derived from the stride. diffusers crops each tile to `tile_sample_min_size - blend_extent` but
    # strides by `int(tile_latent_min_size * (1 - overlap))` latent cells: two roundings that disagree unless the
    # overlap is a whole number of latent cells, and then each tile adds rows twice (133 x 133 for 128 x 128).
    blend_extent = output_tile - output_stride  # the overlap of neighbouring outputs
    result_rows, previous_row = [], None
    for i in range(0, inputs.shape[2], stride):
        windows = [np.ascontiguousarray(inputs[:, :, i : i + tile, j : j + tile]) for j in range(0, inputs.shape[3], stride)]
        row = [np.array(run(window), dtype=np.float32) for window in windows]  # copies: they are blended in place
        for j, decoded in enumerate(row):
            if previous_row is not None:
                blend_v(previous_row[j], decoded, blend_extent)
            if j > 0:
                blend_h(row[j - 1], decoded, blend_extent)
        result_rows.append(np.concatenate([decoded[:, :, :output_stride, :output_stride] for decoded in row], axis=3))
        previous_row = row
    return np.concatenate(result_rows, axis=2)


@dataclass(frozen=True)
class VaeTiling:
    """Tile sizes of one VAE: `tile_sample_min_size` pixels = `tile_latent_min_size` latent cells per tile side."""

    tile_sample_min_size: int  # pixels; a side longer than this is tiled
    tile_latent_min_size: int  # latent cells of one tile
    tile_overlap_factor: float = TILE_OVERLAP_FACTOR  # share of a tile that overlaps its neighbour

    @classmethod
    def from_config(cls, vae_config: dict, *, tile_sample_min_size: int | None = None, tile_overlap_factor: float = TILE_OVERLAP_FACTOR) -> "VaeTiling":
        """The tiles of the VAE of `vae_config` (its `config.json` contents): `sample_size` pixels by default, as
        diffusers' `AutoencoderKL.enable_tiling()`. Raises a ValueError naming the size when tiles that small cannot
        overlap."""
        scale = vae_scale_factor(vae_config)
        from_config = tile_sample_min_size is None
        sample_size = vae_config.get("sample_size") if from_config else tile_sample_min_size
        sample_size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        source = f"the VAE's `sample_size` {sample_size}" if from_config else f"`tile_sample_min_size` {sample_size}"
        if isinstance(sample_size, bool) or not isinstance(sample_size, int):
            raise TypeError(f"`tile_sample_min_size` has to be an int (pixels) but is {type(sample_size).__name__}: {sample_size!r:.80}.")
        if isinstance(tile_overlap_factor, bool) or not isinstance(tile_overlap_factor, (int, float)) or not 0 < tile_overlap_factor < 1:
            raise ValueError(f"`tile_overlap_factor` has to be a number between 0 and 1 (diffusers: 0.25) but is {tile_overlap_factor!r}.")
        if sample_size % scale != 0:
            raise ValueError(f"{source} is not a multiple of the VAE's scale factor {scale}; pass a `tile_sample_min_size` that is.")
        tiling = cls(tile_sample_min_size=sample_size, tile_latent_min_size=sample_size // scale, tile_overlap_factor=tile_overlap_factor)
        cells = tiling.tile_latent_min_size
        if int(cells * tile_overlap_factor) < 1 or int(cells * (1 - tile_overlap_factor)) < 1:  # no overlap, or no stride
            fewest = next(n for n in count(1) if int(n * tile_overlap_factor) >= 1 and int(n * (1 - tile_overlap_factor)) >= 1)
            raise ValueError(
                f"This model is too small to tile: {source} gives tiles of {cells} latent cells, too few to overlap their "
                f"neighbours by {tile_overlap_factor} of a tile ({fewest} cells at least). Pass `tile_sample_min_size` >= "
                f"{fewest * scale} pixels, or decode without tiling (`pipe.disable_vae_tiling()`)."
            )
        return tiling

    def decodes_tiled(self, latents_shape: tuple[int, ...]) -> bool:
        """True when latents of this shape are bigger than one tile (smaller ones decode whole, as in diffusers)."""
        return latents_shape[-1] > self.tile_latent_min_size or latents_shape[-2] > self.tile_latent_min_size

    def encodes_tiled(self, pixels_shape: tuple[int, ...]) -> bool:
        """True when images of this shape are bigger than one tile."""
        return pixels_shape[-1] > self.tile_sample_min_size or pixels_shape[-2] > self.tile_sample_min_size

    @property
    def stride_latent(self) -> int:
        """Latent cells from one tile to the next, diffusers' `int(tile_latent_min_size * (1 - tile_overlap_factor))`:
        decoding and encoding both step on this grid, so that a tile's pixels and its latent cells stay aligned."""
        return int(self.tile_latent_min_size * (1 - self.tile_overlap_factor))

    @property
    def scale(self) -> int:
        """Pixels per latent cell."""
        return self.tile_sample_min_size // self.tile_latent_min_size

    def decode(self, decode_tile: Callable[[np.ndarray], np.ndarray], latents: np.ndarray) -> np.ndarray:
        """(B, C, h, w) latents -> (B, 3, h x scale, w x scale) images, one tile at a time (diffusers' `tiled_decode`)."""
        sizes = dict(tile=self.tile_latent_min_size, stride=self.stride_latent, output_tile=self.tile_sample_min_size)
        return tiled(decode_tile, latents, **sizes, output_stride=self.stride_latent * self.scale)

    def encode(self, encode_tile: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) images -> (B, 2 x latent_channels, H / scale, W / scale) latent parameters, one tile at a time
        (diffusers' `_tiled_encode`, on the latent grid of `decode`)."""
        sizes = dict(tile=self.tile_sample_min_size, stride=self.stride_latent * self.scale, output_tile=self.tile_latent_min_size)
        return tiled(encode_tile, pixels, **sizes, output_stride=self.stride_latent)
