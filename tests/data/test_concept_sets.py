"""watermark_concept_sets: disjoint, seeded, the concept set carries exactly the data's watermark."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.data import decoy_digits, paste_watermark, watermark_concept_sets


def test_sets_are_disjoint_seeded_and_carry_the_watermark():
    data = decoy_digits("watermark", seed=0, position=(0, 0))
    sets = watermark_concept_sets(data, n=50, seed=3)
    assert sets.concept.shape == sets.random_concept.shape == (50, 1, 16, 16)
    assert len(sets.random_pool) == len(data.train_clean) - 100
    # the concept images are clean digits with the data's own watermark (here at (0, 0))
    pasted, masks = paste_watermark(sets.concept, position=(0, 0))
    assert torch.equal(pasted, sets.concept) and masks[:, :3, :3].all()
    # disjoint: no random image equals a concept image outside the watermark
    keep = ~masks[0]
    flat = lambda x: x[:, 0][:, keep]  # noqa: E731
    dist = torch.cdist(flat(sets.concept), torch.cat([flat(sets.random_concept),
                                                      flat(sets.random_pool)]))
    assert dist.min() > 0
    again = watermark_concept_sets(data, n=50, seed=3)
    assert torch.equal(again.concept, sets.concept)
    assert not torch.equal(watermark_concept_sets(data, n=50, seed=4).concept, sets.concept)


def test_too_large_n_is_refused():
    with pytest.raises(ValueError, match="n must lie"):
        watermark_concept_sets(decoy_digits("watermark", seed=0), n=1000)
