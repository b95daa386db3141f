import numpy as np
import pytest

from braver.data.cache import Cache, write_case, write_summary
from braver.data.labels import BRATS_2023
from braver.data.sampling import PatchSampler, build_case_index, split_cases
from braver.errors import BraverError


def write_toy_cache(root, cases=3, shape=(4, 20, 24), seed=0):
    """Hand-made cache: image = position code per channel, a square tumour with 3 classes."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    ids = []
    for n in range(cases):
        image = rng.normal(size=(4, *shape)).astype(np.float32)
        image[:, :, :2, :] = 0  # outside the foreground: the top rows
        label = np.zeros(shape, np.uint8)
        label[:, 5:9, 5:9] = 2  # edema
        label[:, 6:8, 6:8] = 1  # necrosis
        label[:, 7, 7] = 3  # enhancing
        label[:, 0, 0] = 3  # a class right at the corner (outside the image's foreground)
        case_id = f"toy{n:03d}"
        write_case(root, case_id, image, label, {"case_id": case_id})
        ids.append(case_id)
    write_summary(
        root,
        {
            "label_scheme": BRATS_2023.to_json(),
            "channels": ["t1", "t1ce", "t2", "flair"],
            "cases": ids,
        },
    )
    return Cache.open(root)


@pytest.fixture
def toy_cache(tmp_path):
    return write_toy_cache(tmp_path / "cache")


def test_index_groups_foreground_voxels_by_class():
    label = np.array([[[0, 1], [2, 0]]], np.uint8)
    image = np.array([[[[1, 0], [0, 0]]]], np.float16)  # (C=1, Z=1, Y=2, X=2)
    index = build_case_index(label, image, 3)
    assert index.class_counts.tolist() == [1, 1, 1]  # voxel 3 is background outside the fg
    assert index.class_voxels(0).tolist() == [0]
    assert index.class_voxels(1).tolist() == [1]
    assert index.class_voxels(2).tolist() == [2]


def test_balanced_counts_are_exact(toy_cache):
    sampler = PatchSampler.from_cache(toy_cache)
    centres = sampler.sample(4000, "balanced", 0)
    cases = [toy_cache.case(c) for c in toy_cache.case_ids]
    classes = np.array([cases[c].label[z, y, x] for c, z, y, x in centres])
    assert np.bincount(classes, minlength=4).tolist() == [1000, 1000, 1000, 1000]
    centres = sampler.sample(10, "balanced", 0)
    classes = np.array([cases[c].label[z, y, x] for c, z, y, x in centres])
    assert sorted(np.bincount(classes, minlength=4).tolist()) == [2, 2, 3, 3]


def test_border_class_is_kept(toy_cache):
    # class 3 sits at (y, x) = (0, 0) on every slice: the corner must be sampled, not dropped
    sampler = PatchSampler.from_cache(toy_cache)
    centres = sampler.sample(4000, "balanced", 1)
    corner = (centres[:, 2] == 0) & (centres[:, 3] == 0)
    assert corner.sum() > 300


def test_natural_follows_the_data(toy_cache):
    sampler = PatchSampler.from_cache(toy_cache)
    totals = sampler.class_totals
    centres = sampler.sample(60000, "natural", 2)
    cases = [toy_cache.case(c) for c in toy_cache.case_ids]
    classes = np.array([cases[c].label[z, y, x] for c, z, y, x in centres])
    observed = np.bincount(classes, minlength=4) / len(classes)
    np.testing.assert_allclose(observed, totals / totals.sum(), atol=0.01)
    # never outside the foreground: background centres have non-zero image somewhere
    assert (centres[classes == 0][:, 2] >= 2).all()


def test_seeded(toy_cache):
    sampler = PatchSampler.from_cache(toy_cache)
    a = sampler.sample(100, "balanced", 5)
    b = sampler.sample(100, "balanced", 5)
    c = sampler.sample(100, "balanced", 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_index_is_stored_and_reused(toy_cache):
    PatchSampler.from_cache(toy_cache)
    stored = sorted(p.name for p in (toy_cache.root / "index").iterdir())
    assert "toy000.npy" in stored and "toy000.json" in stored
    again = PatchSampler.from_cache(toy_cache)
    assert isinstance(again.indices[0].order, np.memmap)


def test_missing_class_warns_and_balances_the_rest(tmp_path):
    cache = write_toy_cache(tmp_path / "c", cases=1)
    sampler = PatchSampler.from_cache(cache)
    sampler.counts[:, 3] = 0  # pretend there is no enhancing voxel
    with pytest.warns(UserWarning, match="no voxels"):
        centres = sampler.sample(9, "balanced", 0)
    assert len(centres) == 9


def test_split_by_case_is_seeded_and_disjoint():
    ids = [f"c{i}" for i in range(10)]
    train, valid = split_cases(ids, 0.2, seed=3)
    assert len(valid) == 2 and not set(train) & set(valid) and set(train) | set(valid) == set(ids)
    assert split_cases(ids, 0.2, seed=3) == (train, valid)
    assert split_cases(ids, 0.2, seed=4) != (train, valid)
    assert len(split_cases(["a", "b"], 0.1, seed=0)[1]) == 1


def test_k_fold_split_validates_every_case_once():
    ids = [f"c{i:02d}" for i in range(16)]
    splits = [split_cases(ids, 0.2, seed=3, fold=k, folds=5) for k in range(5)]
    valids = [valid for _, valid in splits]
    assert [len(v) for v in valids] == [4, 3, 3, 3, 3]  # as even as can be, the first larger
    assert sorted(c for v in valids for c in v) == ids  # each case validated exactly once
    for train, valid in splits:
        assert sorted(train + valid) == ids and not set(train) & set(valid)
        assert train == [c for c in ids if c in train]  # the cache's order kept
    # the parts follow the seed's order: fold 0 is the first four of its permutation
    perm = np.random.default_rng(3).permutation(16)
    assert set(valids[0]) == {ids[i] for i in perm[:4]}
    assert set(valids[4]) == {ids[i] for i in perm[13:]}
    # fraction and min_valid play no part; the seed does
    assert split_cases(ids, 0.5, seed=3, min_valid=9, fold=2, folds=5) == splits[2]
    assert split_cases(ids, 0.2, seed=4, fold=2, folds=5) != splits[2]
    # without a fold the split is the fraction's, as before
    assert split_cases(ids, 0.25, seed=3)[1] == sorted(ids[i] for i in perm[:4])
    two = split_cases(["a", "b"], 0.0, seed=0, fold=1, folds=2)
    assert len(two[0]) == len(two[1]) == 1


@pytest.mark.parametrize(
    ("fold", "folds", "cases", "message"),
    [
        (
            5,
            5,
            16,
            r"fold 5 of 5 folds is not a fold; use 2 or more folds and a fold from 0 to 4\.",
        ),
        (-1, 5, 16, r"fold -1 of 5 folds is not a fold"),
        (0, 1, 16, r"fold 0 of 1 folds is not a fold; use 2 or more folds and a fold from 0 to 1"),
        (0, 6, 4, r"6 folds need as many labelled cases; there are 4; use at most 4 folds\."),
        (0, 2, 1, r"2 folds need as many labelled cases; there are 1; add labelled cases\."),
    ],
)
def test_a_fold_that_cannot_be_cut_is_refused(fold, folds, cases, message):
    with pytest.raises(BraverError, match=message):
        split_cases([f"c{i}" for i in range(cases)], 0.2, 0, fold=fold, folds=folds)


def test_a_missing_class_leaves_exact_balance_among_the_others(tmp_path):
    """10 balanced centres over the 3 classes present: 4, 3, 3 (the remainder to the first)."""
    cache = write_toy_cache(tmp_path / "c", cases=1)
    sampler = PatchSampler.from_cache(cache)
    sampler.counts[:, 3] = 0  # no enhancing voxel to draw
    with pytest.warns(UserWarning, match="balancing the others"):
        centres = sampler.sample(10, "balanced", 0)
    label = np.asarray(cache.case(cache.case_ids[0]).label)
    classes = label[centres[:, 1], centres[:, 2], centres[:, 3]]
    assert np.bincount(classes, minlength=4).tolist() == [4, 3, 3, 0]
