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


def names(model: nn.Module, selector, **options) -> list[str]:
    return list(resolve_layers(model, selector, **options))


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


# -- exclusions, containers, leaves, path globs (tdhook's selection features) ----------------------

def test_exclude_removes_what_it_matches_and_may_match_nothing(net):
    assert names(net, "features.*", exclude=nn.ReLU) == ["features.0", "features.2"]
    assert names(net, "*", exclude=["features*", "re:linear1.*"]) == ["head", "head.0"]
    assert names(net, "features.*", exclude="nothing.here") == names(net, "features.*")
    with pytest.raises(LayerNotFoundError, match="leave none"):
        resolve_layers(net, "features.*", exclude="features.*")
    with pytest.raises(LayerNotFoundError, match="Invalid regular expression"):
        resolve_layers(net, "*", exclude="re:(")


def test_skip_containers_and_leaves_only(net):
    # tdhook skips Sequential/ModuleList by default; here it is asked for.
    assert names(net, "*", skip_containers=True) == [
        "features.0", "features.1", "features.2", "features.3", "linear1", "linear10", "head.0"]
    assert names(net, nn.Module, leaves_only=True) == names(net, "*", skip_containers=True)
    assert names(net, nn.Module, skip_containers=True)[0] == ""  # the root is a Net
    assert names(net, "re:features.*", leaves_only=True) == [
        "features.0", "features.1", "features.2", "features.3"]
    wrapped = nn.Sequential(net)  # the root (a Sequential) and the Net inside it
    assert "" not in names(wrapped, nn.Module, skip_containers=True)
    assert "0" in names(wrapped, nn.Module, skip_containers=True)  # Net is not a container


def test_select_object_works_wherever_a_selector_does(net):
    from latentsurgeon.activations import capture
    from latentsurgeon.hooks import Select

    choice = Select("features.*", exclude=nn.ReLU)
    assert names(net, choice) == ["features.0", "features.2"]
    assert names(net, [choice, "head.0"]) == ["features.0", "features.2", "head.0"]
    assert names(net, Select(nn.Module, skip_containers=True, exclude=[nn.Linear, Net])) == [
        "features.0", "features.1", "features.2", "features.3"]
    assert "exclude=<class" in repr(choice)
    with capture(net, choice) as cap:
        net(torch.randn(2, 1, 4, 4))
    assert cap.layers == ["features.0", "features.2"]
    assert set(cap.activations) == {"features.0", "features.2"}
    with pytest.raises(LayerNotFoundError):
        resolve_layers(net, Select("features.*", exclude="features.*"))


class Blocks(nn.Module):
    """transformer.h.<i>.{attn,mlp}.<leaf>: the layout of a GPT-2."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.h = nn.ModuleList()
        for _ in range(3):
            block = nn.Module()
            block.attn = nn.Sequential(nn.Linear(2, 2))
            block.mlp = nn.Sequential(nn.Linear(2, 2), nn.GELU())
            self.transformer.h.append(block)


def test_path_glob_star_stays_within_one_level():
    model = Blocks()
    assert names(model, "path:transformer.h.*") == [
        "transformer.h.0", "transformer.h.1", "transformer.h.2"]
    # a plain glob crosses dots (fnmatch): blocks and everything inside them
    assert len(names(model, "transformer.h.*")) == 3 * 6
    assert names(model, "path:transformer.h.*.mlp") == [
        "transformer.h.0.mlp", "transformer.h.1.mlp", "transformer.h.2.mlp"]
    assert names(model, "path:**.attn") == [
        "transformer.h.0.attn", "transformer.h.1.attn", "transformer.h.2.attn"]
    assert names(model, "path:transformer.**.0") == names(model, "re:transformer\\..*\\.0")
    assert names(model, "path:transformer.h.[02]") == ["transformer.h.0", "transformer.h.2"]
    assert names(model, "path:transformer.h.[!02]") == ["transformer.h.1"]
    assert names(model, "path:transformer.h.?.mlp.?") == [
        f"transformer.h.{i}.mlp.{j}" for i in range(3) for j in range(2)]
    assert names(model, "path:transformer.h.1.**") == [
        "transformer.h.1", "transformer.h.1.attn", "transformer.h.1.attn.0",
        "transformer.h.1.mlp", "transformer.h.1.mlp.0", "transformer.h.1.mlp.1"]
    with pytest.raises(LayerNotFoundError, match="Did you mean"):
        resolve_layers(model, "path:transformer.hh.*")


@pytest.mark.parametrize("bad", [3, 2.5, None, True, b"features", {"features": 1}])
def test_selector_of_a_wrong_type_is_a_clear_type_error(net, bad):
    from latentsurgeon.errors import InvalidParameterError
    from latentsurgeon.hooks import LayerSelectorError

    for selector in (bad, [bad], ["features.0", bad]):
        with pytest.raises(LayerSelectorError) as info:
            resolve_layers(net, selector)
        err = info.value
        assert isinstance(err, TypeError) and isinstance(err, InvalidParameterError)
        message = str(err)
        assert message.startswith("layers must be a layer name")
        assert "'re:' regex" in message and "nn.Module class" in message
        assert repr(bad) in message and type(bad).__name__ in message


def test_int_selector_suggests_the_name_string():
    from latentsurgeon.hooks import LayerSelectorError

    seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(LayerSelectorError, match="pass the string '1'"):
        resolve_layers(seq, 1)
