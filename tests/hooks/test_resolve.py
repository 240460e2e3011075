"""Layer resolution: names, root, globs, full-match regexes, classes, instances, lists, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon import LatentSurgeonError, LayerNotFoundError
from latentsurgeon.hooks import get_layer, layer_names, resolve_layers


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
        )
        self.linear1 = nn.Linear(4, 4)
        self.linear10 = nn.Linear(4, 4)
        self.head = nn.Sequential(nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=(2, 3))
        return self.head(self.linear10(self.linear1(h)))


ALL = ["", "features", "features.0", "features.1", "features.2", "features.3",
       "linear1", "linear10", "head", "head.0"]


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


def names(model: nn.Module, selector) -> list[str]:
    return list(resolve_layers(model, selector))


def test_named_modules_fixture_is_what_we_think(net):
    assert [n for n, _ in net.named_modules()] == ALL
    assert layer_names(net) == ALL[1:]


def test_exact_name_returns_that_module(net):
    found = resolve_layers(net, "features.3")
    assert list(found) == ["features.3"]
    assert found["features.3"] is net.features[3]
    # A prefix of a name is not a match.
    assert names(net, "linear1") == ["linear1"]


def test_empty_string_is_the_root(net):
    found = resolve_layers(net, "")
    assert list(found) == [""]
    assert found[""] is net


def test_glob(net):
    assert names(net, "features.*") == ["features.0", "features.1", "features.2", "features.3"]
    assert names(net, "linear*") == ["linear1", "linear10"]
    assert names(net, "features.[02]") == ["features.0", "features.2"]
    assert names(net, "head.?") == ["head.0"]
    # A glob never selects the root.
    assert "" not in names(net, "*")
    assert names(net, "*") == ALL[1:]


def test_regex_is_full_match(net):
    assert names(net, "re:linear1") == ["linear1"]  # not linear10
    assert names(net, "re:linear1.*") == ["linear1", "linear10"]
    assert names(net, r"re:features\.[0-9]") == ["features.0", "features.1", "features.2",
                                                 "features.3"]
    assert names(net, r"re:features\.(1|3)") == ["features.1", "features.3"]
    # re.search would find these; a full match does not.
    with pytest.raises(LayerNotFoundError):
        resolve_layers(net, "re:inear1")
    with pytest.raises(LayerNotFoundError):
        resolve_layers(net, "re:eatures.0")
    assert names(net, "re:features") == ["features"]  # the container only, not its children
    assert names(net, "re:features.*") == ["features", "features.0", "features.1", "features.2",
                                           "features.3"]


def test_module_class_selects_every_instance_in_model_order(net):
    assert names(net, nn.Conv2d) == ["features.0", "features.2"]
    assert names(net, nn.Linear) == ["linear1", "linear10", "head.0"]
    assert names(net, nn.ReLU) == ["features.1", "features.3"]
    # Subclasses count as instances of the class.
    assert names(net, nn.Module) == ALL
    assert names(net, Net) == [""]


def test_module_instance(net):
    assert names(net, net.linear10) == ["linear10"]
    assert resolve_layers(net, net.head[0])["head.0"] is net.head[0]
    assert names(net, net) == [""]


def test_list_is_union_in_model_order_without_duplicates(net):
    selected = names(net, ["linear10", nn.Conv2d, "features.0", "re:linear1", net.head[0]])
    assert selected == ["features.0", "features.2", "linear1", "linear10", "head.0"]
    assert names(net, ("head.0", "features.*", "features.1")) == [
        "features.0", "features.1", "features.2", "features.3", "head.0"]
    assert names(net, ["linear1", "linear1", "re:linear1"]) == ["linear1"]
    # Generators are fine too.
    assert names(net, (n for n in ["head", ""])) == ["", "head"]


def test_unknown_name_error_is_keyerror_and_suggests_close_matches(net):
    with pytest.raises(LayerNotFoundError) as info:
        resolve_layers(net, "featurs.3")
    err = info.value
    assert isinstance(err, KeyError)
    assert isinstance(err, LatentSurgeonError)
    message = str(err)
    assert "'featurs.3'" in message
    assert "Did you mean" in message and "'features.3'" in message
    assert "latentsurgeon layers" in message
    assert not message.startswith('"')  # readable, not KeyError's quoted repr
    # Catchable as a plain KeyError too.
    with pytest.raises(KeyError):
        resolve_layers(net, "classifier")


def test_unknown_name_suggests_by_last_component(net):
    with pytest.raises(LayerNotFoundError) as info:
        resolve_layers(net, "encoder.block.head.0")
    assert "latentsurgeon layers" in str(info.value)


def test_unknown_glob_regex_class_instance_raise(net):
    for selector in ("classifier.*", "re:classifier", nn.LSTM, nn.Linear(4, 4)):
        with pytest.raises(LayerNotFoundError) as info:
            resolve_layers(net, selector)
        assert "latentsurgeon layers" in str(info.value)


def test_one_unknown_selector_in_a_list_fails_the_whole_list(net):
    with pytest.raises(LayerNotFoundError) as info:
        resolve_layers(net, ["features.0", "lineer10"])
    assert "'linear10'" in str(info.value)


def test_bad_regex(net):
    with pytest.raises(LayerNotFoundError) as info:
        resolve_layers(net, "re:features.(")
    assert "Invalid regular expression" in str(info.value)
    assert isinstance(info.value, LatentSurgeonError)


def test_empty_list(net):
    with pytest.raises(LayerNotFoundError, match="empty"):
        resolve_layers(net, [])


def test_bad_selector_type(net):
    with pytest.raises(TypeError):
        resolve_layers(net, [3])


def test_get_layer(net):
    assert get_layer(net, "features.2") is net.features[2]
    assert get_layer(net, "") is net
    assert get_layer(net, "head.*") is net.head[0]  # a glob that selects exactly one is fine
    with pytest.raises(LayerNotFoundError) as info:
        get_layer(net, "features.*")
    message = str(info.value)
    assert "4 layers" in message
    assert "features.0" in message and "features.3" in message
    with pytest.raises(LayerNotFoundError) as info:
        get_layer(net, "features.9")
    assert "latentsurgeon layers" in str(info.value)
