"""`latentsurgeon tcav`'s default random pool holds none of the concept's own examples: the
train split's artifact-flagged samples and exact copies of the concept inputs are left out, and
a train split without artifact flags is refused with a way to pass a clean pool."""

from __future__ import annotations

import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from latentsurgeon.cli import main
from latentsurgeon.cli.tcav import default_random_pool
from latentsurgeon.errors import InvalidParameterError


def _split(n: int = 12, flagged: tuple[int, ...] = (1, 4, 7)) -> SimpleNamespace:
    images = torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)
    artifact = torch.zeros(n, dtype=torch.bool)
    artifact[list(flagged)] = True
    return SimpleNamespace(images=images, labels=torch.arange(n) % 2, artifact=artifact)


def test_flagged_samples_and_copies_of_the_concept_are_left_out():
    train = _split()
    concept = torch.cat([train.images[[1, 4]], train.images[[9]], torch.full((1, 1, 2, 2), -1.0)])
    pool, left_out = default_random_pool(SimpleNamespace(train=train), concept)
    assert left_out == 4  # 1, 4, 7 flagged; 9 a copy of a concept input
    expected = [i for i in range(12) if i not in (1, 4, 7, 9)]
    assert torch.equal(pool, train.images[expected])


def test_a_train_split_without_artifact_flags_is_refused():
    train = SimpleNamespace(images=torch.rand(10, 1, 2, 2), labels=torch.arange(10) % 2)
    with pytest.raises(InvalidParameterError, match="--random PKG.MOD:FN"):
        default_random_pool(SimpleNamespace(train=train), torch.rand(3, 1, 2, 2))
    with pytest.raises(InvalidParameterError, match="free of the concept"):
        default_random_pool(SimpleNamespace(train=_split(4, (0, 1, 2))), torch.rand(2, 1, 2, 2))


CONCEPT_MODULE = textwrap.dedent(
    """
    import torch
    from latentsurgeon.data import decoy_digits

    def watermarked():  # the concept's examples: watermarked digits of the train split itself
        train = decoy_digits("watermark", seed=0).train
        return train.images[train.artifact.bool()][:60]

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    """
)


def test_the_cli_hands_tcav_a_pool_without_the_concept(tmp_path, monkeypatch, capsys):
    import latentsurgeon.concepts as concepts
    from latentsurgeon.data import decoy_digits

    (tmp_path / "tcav_concept_mod.py").write_text(CONCEPT_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tcav_concept_mod", None)
    seen = {}

    def recording_tcav(model, layer, inputs, target, concept, *, random, **kw):
        seen.update(concept=concept, random=random)
        return SimpleNamespace(mean=1.0, std=0.0, random_mean=0.5, p_value=0.001,
                               significant=True, to_dict=lambda: {"layer": layer})

    monkeypatch.setattr(concepts, "tcav", recording_tcav)
    assert main(["tcav", "--model", "tcav_concept_mod:make_model", "--layers", "1",
                 "--target", "0", "--concept", "tcav_concept_mod:watermarked"]) == 0
    assert "random pool: the train split without the concept's examples" in capsys.readouterr().out
    train = decoy_digits("watermark", seed=0).train
    flagged = train.images[train.artifact.bool()]
    pool = seen["random"]
    assert len(pool) == int((~train.artifact.bool()).sum())
    # no watermarked image, and none of the concept's own inputs, is in the pool
    flat = pool.reshape(len(pool), -1)
    for image in torch.cat([flagged, seen["concept"]]).reshape(-1, flat.shape[1]):
        assert not bool((flat == image).all(1).any())

    # a --data whose train split has no artifact flags: one line, exit code 2, how to fix it
    monkeypatch.setattr(concepts, "tcav", recording_tcav)
    (tmp_path / "tcav_plain_data.py").write_text(
        "import torch\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return {'train': {'images': torch.rand(20, 1, 16, 16, generator=g),\n"
        "                      'labels': torch.arange(20) % 2},\n"
        "            'test': {'images': torch.rand(10, 1, 16, 16, generator=g),\n"
        "                     'labels': torch.arange(10) % 2}}\n")
    sys.modules.pop("tcav_plain_data", None)
    assert main(["tcav", "--model", "tcav_concept_mod:make_model", "--layers", "1",
                 "--target", "0", "--data", "tcav_plain_data:make",
                 "--concept", "tcav_concept_mod:watermarked"]) == 2
    assert "--random PKG.MOD:FN" in capsys.readouterr().err
