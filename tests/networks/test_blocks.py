"""Building blocks are written for any number of spatial axes (3D later): check them on 2D and 3D grids."""
from __future__ import annotations

import pytest
import torch

from medurwkv_net.networks.blocks import PatchEmbed, PatchExpand, PatchMerge, VRWKVBlock, q_shift, resize_pos_embed


def test_q_shift_3d_groups():
    d, h, w, c = 2, 3, 4, 12
    grid = torch.arange(d * h * w, dtype=torch.float32).reshape(d, h, w) + 1
    x = grid.reshape(1, -1, 1).expand(1, d * h * w, c).contiguous()
    y = q_shift(x, [d, h, w]).reshape(d, h, w, c)
    torch.testing.assert_close(y[..., 0], torch.cat([torch.zeros(d, h, 1), grid[..., :-1]], 2))  # w - 1
    torch.testing.assert_close(y[..., 3], torch.cat([grid[..., 1:], torch.zeros(d, h, 1)], 2))  # w + 1
    torch.testing.assert_close(y[..., 4], torch.cat([torch.zeros(d, 1, w), grid[:, :-1]], 1))  # h - 1
    torch.testing.assert_close(y[..., 7], torch.cat([grid[:, 1:], torch.zeros(d, 1, w)], 1))  # h + 1
    torch.testing.assert_close(y[..., 8], torch.cat([torch.zeros(1, h, w), grid[:-1]], 0))  # d - 1
    torch.testing.assert_close(y[..., 11], torch.cat([grid[1:], torch.zeros(1, h, w)], 0))  # d + 1


@pytest.mark.parametrize("grid", [[4, 6], [2, 4, 6]])
def test_expand_merge_and_block_shapes(grid):
    nd = len(grid)
    t = 1
    for g in grid:
        t *= g
    x = torch.randn(2, t, 16)
    up, g2 = PatchExpand(nd, 16, 8, 2)(x, grid)
    assert g2 == [g * 2 for g in grid] and up.shape == (2, t * 2**nd, 8)
    down, g3 = PatchMerge(nd, 8, 32)(up, g2)
    assert g3 == grid and down.shape == (2, t, 32)
    y = VRWKVBlock(32, use_ln0=True)(down, g3)
    assert y.shape == down.shape and torch.isfinite(y).all()


def test_patch_expand_places_subpixels():
    pe = PatchExpand(2, 1, 1, 2)
    with torch.no_grad():
        pe.expand.weight.copy_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
    pe.norm = torch.nn.Identity()
    y, g = pe(torch.ones(1, 1, 1), [1, 1])
    assert g == [2, 2]
    torch.testing.assert_close(y.reshape(2, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_patch_embed_pads_and_3d():
    tok, grid = PatchEmbed(2, 1, 8, 4)(torch.randn(1, 1, 9, 5))
    assert grid == [3, 2] and tok.shape == (1, 6, 8)
    tok, grid = PatchEmbed(3, 1, 8, 4)(torch.randn(1, 1, 8, 4, 5))
    assert grid == [2, 1, 2] and tok.shape == (1, 4, 8)


def test_resize_pos_embed_errors_and_3d():
    with pytest.raises(ValueError, match=r"does not match a grid of \[3, 3\]"):
        resize_pos_embed(torch.zeros(1, 10, 4), [3, 3], [4, 4])
    out = resize_pos_embed(torch.randn(1, 8, 4), [2, 2, 2], [3, 4, 2], mode="trilinear")
    assert out.shape == (1, 24, 4)
