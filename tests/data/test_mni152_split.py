"""The demo's slice split (``medurwkv_net.data.mni152.split_slices``): layout properties, on synthetic
label volumes of several usable ranges and on the real template."""
from __future__ import annotations

import numpy as np
import pytest

from medurwkv_net.data import mni152

SPLITS = ("training", "validation", "test")


def _blocks(splits: dict[str, list[int]]) -> list[tuple[str, int, int]]:
    """(split, first, last) of every maximal run of consecutive slices of one split, bottom to top."""
    owner = {z: name for name, zs in splits.items() for z in zs}
    blocks: list[list] = []
    for z in sorted(owner):
        if blocks and blocks[-1][0] == owner[z] and blocks[-1][2] == z - 1:
            blocks[-1][2] = z
        else:
            blocks.append([owner[z], z, z])
    return [tuple(b) for b in blocks]


def check_layout(splits: dict[str, list[int]], z0: int, z1: int) -> list[tuple[str, int, int]]:
    assert set(splits) == set(SPLITS)
    for name in SPLITS:
        assert splits[name], name
        assert len(set(splits[name])) == len(splits[name]), f"{name} repeats a slice"
    all_z = [z for name in SPLITS for z in splits[name]]
    assert len(set(all_z)) == len(all_z), "splits overlap"
    assert min(all_z) == z0 and max(all_z) == z1 - 1, "the layout spans the usable range"
    blocks = _blocks(splits)
    # the range starts and ends with training; held-out blocks alternate with training blocks
    assert blocks[0][0] == "training" and blocks[-1][0] == "training"
    for below, block, above in zip(blocks, blocks[1:], blocks[2:]):
        if block[0] != "training":
            assert below[0] == "training" and above[0] == "training", (below, block, above)
    assert [b[0] for b in blocks if b[0] != "training"] == list(mni152.EVAL_ORDER)
    for name, first, last in blocks:
        if name != "training":
            assert last - first + 1 == mni152.EVAL_BLOCK, (name, first, last)
    # neighbouring blocks belong to different splits and are exactly GAP unused slices apart
    for (a, _, a_last), (b, b_first, _) in zip(blocks, blocks[1:]):
        assert a != b
        assert b_first - a_last - 1 == mni152.GAP, (a, a_last, b, b_first)
    # hence any two slices of different splits are more than GAP apart
    z = {name: np.array(splits[name]) for name in SPLITS}
    for a, b in (("training", "validation"), ("training", "test"), ("validation", "test")):
        assert np.abs(z[a][:, None] - z[b][None, :]).min() > mni152.GAP, (a, b)
    # training blocks are as even as possible
    train_lengths = [last - first + 1 for name, first, last in blocks if name == "training"]
    assert max(train_lengths) - min(train_lengths) <= 1, train_lengths
    return blocks


@pytest.mark.parametrize("z0, z1", [(10, 150), (0, 200), (30, 130), (5, 5 + 91), (17, 17 + 150)])
def test_every_held_out_block_is_flanked_by_training(z0, z1):
    labels = np.zeros((8, 8, 200), np.uint8)
    labels[:4, :, z0:z1] = 1
    labels[:2, :, z0:z1] = 2
    check_layout(mni152.split_slices(labels), z0, z1)


def test_slices_below_the_tissue_fraction_are_not_used():
    labels = np.zeros((10, 10, 160), np.uint8)
    labels[:5, :, 20:140] = 2
    labels[0, 0, :20] = 1  # 1 % tissue: below MIN_TISSUE_FRACTION (2 %)
    splits = mni152.split_slices(labels)
    check_layout(splits, 20, 140)
    assert min(min(v) for v in splits.values()) == 20


def test_too_short_a_range_is_an_error():
    n_eval = len(mni152.EVAL_ORDER)
    shortest = n_eval * mni152.EVAL_BLOCK + 2 * n_eval * mni152.GAP + n_eval + 1
    labels = np.zeros((8, 8, 200), np.uint8)
    labels[:4, :, 3:3 + shortest] = 1
    check_layout(mni152.split_slices(labels), 3, 3 + shortest)  # one slice per training block still works
    labels[:, :, 3 + shortest - 1] = 0
    with pytest.raises(ValueError, match="too short"):
        mni152.split_slices(labels)
    with pytest.raises(ValueError, match="3D"):
        mni152.split_slices(labels[:, :, 0])
    with pytest.raises(ValueError, match="tissue fraction"):
        mni152.split_slices(np.zeros((4, 4, 4), np.uint8))


def test_template_split():
    _, p_gm, p_wm, _ = mni152.load_template()
    labels = mni152.make_labels(p_gm, p_wm)
    splits = mni152.split_slices(labels)
    blocks = check_layout(splits, 10, 150)  # the usable range of the 2009a template
    assert (len(splits["training"]), len(splits["validation"]), len(splits["test"])) == (56, 12, 12)
    # the topmost and bottommost slices (smallest brain sections) are training slices
    assert blocks[-1] == ("training", 142, 149) and blocks[0] == ("training", 10, 17)
    # the preparation record names the layout, so a changed layout rewrites prepared folders
    record = mni152._preparation_record(mni152.BACKGROUND_THRESHOLD, mni152.MIN_TISSUE_FRACTION)
    assert record["eval_order"] == list(mni152.EVAL_ORDER) and record["eval_block"] == mni152.EVAL_BLOCK
    assert record["version"] >= 2
