"""View consensus (consensus.py): joint / apart counts from mask coverage, the merge rule, and the bookkeeping
when tracks merge or end."""

from types import SimpleNamespace

import numpy as np

from ros2_opentrack import consensus as consensus_module
from ros2_opentrack.consensus import Consensus, MaskSet, mask_coverage


def box_track(x0, x1):
    return SimpleNamespace(box_min=np.array([x0, 0.0, 0.0]), box_max=np.array([x1, 1.0, 1.0]))


TRACKS = {1: box_track(0.0, 1.0), 2: box_track(1.02, 2.0), 3: box_track(5.0, 6.0)}  # 1, 2 touch; 3 is far


def consensus():
    return Consensus(span=0.7, separate=0.2, min_seen_voxels=10, touch_gap_m=0.1)


def test_mask_coverage_is_the_share_of_visible_pixels_inside_each_mask():
    mask_a = np.zeros((10, 10), bool)
    mask_a[:, :5] = True  # left half
    mask_b = np.zeros((10, 10), bool)
    mask_b[8:, 8:] = True
    left = np.array([[1, 1], [2, 3], [3, 4], [4, 5]])  # (x, y): all in the left half
    half = np.array([[1, 1], [2, 2], [7, 7], [8, 8]])  # two left, one right, one in b
    tiny = np.array([[0, 0]])
    cover = mask_coverage([mask_a, mask_b], [left, half, tiny], min_points=2)
    assert cover[:, 0].tolist() == [1.0, 0.0]
    assert cover[:, 1].tolist() == [0.5, 0.25]
    assert np.isnan(cover[:, 2]).all()  # too few visible points: no evidence


def test_mask_set_finds_each_box_once_and_covers_as_mask_coverage(monkeypatch):
    rng = np.random.default_rng(0)
    masks = [np.zeros((30, 40), bool) for _ in range(3)]
    masks[0][2:9, 5:20] = masks[1][10:25, 18:35] = masks[2][0:30, 0:4] = True
    pixels = [np.c_[rng.integers(0, 40, 80), rng.integers(0, 30, 80)] for _ in range(4)]
    found = []
    real_box = consensus_module._box
    monkeypatch.setattr(consensus_module, "_box", lambda m: found.append(1) or real_box(m))
    masks_set = MaskSet(masks)
    first = masks_set.coverage([2, 0], pixels, min_points=5)
    again = masks_set.coverage([0, 1, 2], pixels, min_points=5)
    assert len(found) == 3  # masks 0 and 2 were asked twice, each box found once
    np.testing.assert_array_equal(first, mask_coverage([masks[2], masks[0]], pixels, min_points=5))
    np.testing.assert_array_equal(again, mask_coverage(masks, pixels, min_points=5))
    assert masks_set.box(1) == (18, 10, 34, 24) and MaskSet.of(masks_set) is masks_set


def test_one_mask_over_two_touching_tracks_counts_joint_own_masks_leaving_out_count_apart():
    c = consensus()
    c.observe(np.array([[0.9, 0.8, 0.9]]), [1], [1, 2, 3], TRACKS)  # track 1's mask spans all three
    assert c.counts(1, 2) == (1, 0)
    assert c.counts(1, 3) == (0, 0)  # 3 is far from both: never counted
    c.observe(np.array([[0.95, 0.1, 0.0], [0.05, 0.9, 0.0]]), [1, 2], [1, 2, 3], TRACKS)  # one mask each
    assert c.counts(1, 2) == (1, 1)
    c.observe(np.array([[0.95, 0.1, 0.0]]), [None], [1, 2, 3], TRACKS)  # a mask of no track: says nothing apart
    assert c.counts(1, 2) == (1, 1)
    c.observe(np.array([[0.5, 0.5, 0.0]]), [1], [1, 2, 3], TRACKS)  # half of each: neither
    assert c.counts(1, 2) == (1, 1)
    c.observe(np.array([[0.9, np.nan, 0.0]]), [1], [1, 2, 3], TRACKS)  # 2 barely in view: no evidence
    assert c.counts(1, 2) == (1, 1)


def test_a_linked_pair_counts_though_it_does_not_touch():
    """Track 3 opened beside track 1 while 1 was out of view (Track.born_beside): the far half of a table need not
    touch the near half's track, and a view of both still counts, joint or apart and both masked."""
    c = consensus()
    c.observe(np.array([[0.9, 0.0, 0.9]]), [1], [1, 2, 3], TRACKS, linked=[(3, 1)])  # one mask over 1 and 3
    assert c.counts(1, 3) == (1, 0)
    c.observe(np.array([[0.9, 0.0, 0.1], [0.0, 0.0, 0.9]]), [1, 3], [1, 2, 3], TRACKS, linked=[(3, 1)])
    assert c.counts(1, 3) == (1, 1) and c.both_masked(1, 3) == 1
    c.observe(np.array([[0.9, 0.0, 0.9]]), [1], [1, 2, 3], TRACKS)  # not linked: far apart, not counted
    assert c.counts(1, 3) == (1, 1) and c.counts(2, 3) == (0, 0)


def test_a_mask_over_the_cup_on_a_table_and_the_cups_own_mask_count_both_ways():
    """The table's mask (track 1) covers the cup (track 2); the cup's own mask leaves the table out."""
    c = consensus()
    for _ in range(4):
        c.observe(np.array([[0.9, 0.95, 0.0], [0.03, 0.9, 0.0]]), [1, 2], [1, 2, 3], TRACKS)
    assert c.counts(1, 2) == (4, 4)
    assert not c.same_object(1, 2, min_joint=2, ratio=3.0)


def test_same_object_needs_min_joint_and_a_clear_majority():
    c = consensus()
    joint, apart = np.array([[0.9, 0.9, 0.0]]), np.array([[0.9, 0.0, 0.0], [0.0, 0.9, 0.0]])
    c.observe(joint, [1], [1, 2, 3], TRACKS)
    assert not c.same_object(1, 2, min_joint=2, ratio=3.0)  # one view is not enough
    c.observe(joint, [1], [1, 2, 3], TRACKS)
    assert c.same_object(1, 2, min_joint=2, ratio=3.0)
    c.observe(apart, [1, 2], [1, 2, 3], TRACKS)
    assert not c.same_object(1, 2, min_joint=2, ratio=3.0)  # 2 joint < 3 x 1 apart: a merged mask or two
    for _ in range(2):
        c.observe(joint, [2], [1, 2, 3], TRACKS)
    assert c.same_object(1, 2, min_joint=2, ratio=3.0)  # 4 joint >= 3 x 1 apart


def test_fold_moves_counts_to_the_kept_track_and_forget_drops_them():
    tracks = {**TRACKS, 4: box_track(1.5, 2.5)}
    c = consensus()
    c.observe(np.array([[0.0, 0.9, 0.0, 0.9]]), [4], [1, 2, 3, 4], tracks)  # 2 and 4 joint
    c.observe(np.array([[0.9, 0.9, 0.0, 0.0]]), [1], [1, 2, 3, 4], tracks)  # 1 and 2 joint
    c.fold(keep=4, drop=2)  # 2 merged into 4: its pair with 1 becomes 4's
    assert c.counts(1, 4) == (1, 0)
    assert c.counts(2, 4) == (0, 0) and c.counts(1, 2) == (0, 0)
    c.forget([1])
    assert len(c) == 0


def test_counts_survive_to_arrays_and_restore_without_unknown_tracks():
    c = consensus()
    c.observe(np.array([[0.9, 0.9, 0.0]]), [1], [1, 2, 3], TRACKS)
    c.observe(np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]]), [1, 2], [1, 2, 3], TRACKS)
    pairs, counts = c.to_arrays()
    assert pairs.tolist() == [[1, 2]] and counts.tolist() == [[1, 1, 0, 1]]
    back = consensus()
    back.restore(pairs, counts, track_ids=[1, 2])
    assert back.counts(1, 2) == (1, 1) and back.both_masked(1, 2) == 1
    back.restore(pairs, counts[:, :3], track_ids=[1, 2])  # a state saved before both-masked counts
    assert back.counts(1, 2) == (1, 1) and back.both_masked(1, 2) == 0
    back.restore(pairs, counts[:, :2], track_ids=[1, 2])  # a state saved before born-apart counts
    assert back.counts(1, 2) == (1, 1) and back.split_evidence(1, 2) == 1
    back.restore(pairs, counts, track_ids=[1])  # 2 is gone: its pair is dropped
    assert len(back) == 0


def test_a_mask_that_opened_its_track_gives_split_evidence_not_a_view_apart():
    """Track 2 was opened by its mask this keyframe: that it and track 1's mask leave each other out is
    evidence only for splitting a later mask over both, never a vote against merging them."""
    c = consensus()
    apart = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]])
    c.observe(apart, [1, 2], [1, 2, 3], TRACKS, born={2})  # 1's mask continued 1; 2's opened 2
    assert c.counts(1, 2) == (0, 0) and c.split_evidence(1, 2) == 1
    c = consensus()
    c.observe(apart, [1, 2], [1, 2, 3], TRACKS, born={1, 2})  # both opened here
    assert c.counts(1, 2) == (0, 0) and c.split_evidence(1, 2) == 1
    c.observe(apart, [1, 2], [1, 2, 3], TRACKS)  # seen apart again, both continued
    assert c.counts(1, 2) == (0, 1) and c.split_evidence(1, 2) == 2
    pairs, counts = c.to_arrays()
    assert counts.tolist() == [[0, 1, 1, 2]]  # both took masks in both keyframes
    c.fold(keep=1, drop=2)
    assert len(c) == 0


def test_keyframes_where_both_took_a_mask_of_their_own_are_counted_however_the_masks_cover():
    """both_masked counts the keyframes in which each of two touching tracks in view took a mask of its own,
    whatever the coverage says: track 1 holds part of its neighbour, so 2's mask covers half of 1 and no view
    counts apart, yet the two took two masks."""
    c = consensus()
    murky = np.array([[0.6, 0.0, 0.0], [0.5, 0.9, 0.0]])  # 1's mask covers 60% of 1; 2's covers 2 and half of 1
    for _ in range(3):
        c.observe(murky, [1, 2], [1, 2, 3], TRACKS)
    assert c.counts(1, 2) == (0, 0) and c.both_masked(1, 2) == 3
    c.observe(murky, [1, None], [1, 2, 3], TRACKS)  # 2 took no mask here
    c.observe(np.array([[0.9, np.nan, 0.0], [0.9, np.nan, 0.0]]), [1, 2], [1, 2, 3], TRACKS)  # 2 not in view
    assert c.both_masked(1, 2) == 3
    assert c.both_masked(1, 3) == 0 and c.both_masked(2, 3) == 0  # 3 is far: never counted
    c.fold(keep=2, drop=1)
    assert c.both_masked(1, 2) == 0 and len(c) == 0
