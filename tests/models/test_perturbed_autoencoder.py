"""Perturbations, the perturbed autoencoder, the encoder classifier and the pretext recipes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.data import load_digits16
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.models import (
    PRETEXT_TASKS,
    ContrastiveEncoder,
    DigitAutoencoder,
    EncoderClassifier,
    GaussianNoise,
    Identity,
    PerturbedAutoencoder,
    RandomMask,
    digit_encoder,
    evaluate_accuracy,
    make_perturbation,
    pretext_model,
    train_autoencoder,
    train_classifier,
    train_pretext,
)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits16()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=g)
    return images[order], labels[order]


# --- perturbations --------------------------------------------------------------------------------


def test_identity_changes_nothing():
    x = torch.rand(4, 1, 16, 16)
    assert Identity().train()(x) is x


def test_gaussian_noise_in_training_only():
    x = torch.rand(64, 1, 16, 16)
    noise = GaussianNoise(std=0.3).train()
    torch.manual_seed(0)
    diff = noise(x) - x
    assert abs(diff.mean().item()) < 0.01
    assert diff.std().item() == pytest.approx(0.3, rel=0.03)
    assert noise.eval()(x) is x
    assert GaussianNoise(std=0.0).train()(x) is x


def test_random_mask_in_training_only():
    x = torch.rand(64, 1, 16, 16) + 0.5  # no entry is 0 before masking
    mask = RandomMask(fraction=0.3).train()
    torch.manual_seed(0)
    out = mask(x)
    masked = out == 0
    assert masked.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(out[~masked], x[~masked])
    assert mask.eval()(x) is x
    assert torch.equal(RandomMask(1.0, value=-1.0).train()(x), torch.full_like(x, -1.0))


@pytest.mark.parametrize("module", [GaussianNoise(0.3), RandomMask(0.3)])
def test_perturbations_follow_the_global_seed(module):
    x = torch.rand(8, 1, 16, 16)
    module.train()
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(module(x))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_make_perturbation():
    assert isinstance(make_perturbation(None), Identity)
    assert isinstance(make_perturbation("identity"), Identity)
    assert make_perturbation("noise", std=0.2).std == 0.2
    assert make_perturbation("mask", fraction=0.1).fraction == 0.1
    custom = nn.Dropout(0.5)
    assert make_perturbation(custom) is custom
    with pytest.raises(InvalidParameterError, match="perturbation must be one of"):
        make_perturbation("blur")
    with pytest.raises(InvalidParameterError, match="no settings"):
        make_perturbation("identity", std=0.1)
    with pytest.raises(InvalidParameterError, match="std"):
        GaussianNoise(std=-1.0)
    with pytest.raises(InvalidParameterError, match="fraction"):
        RandomMask(fraction=1.5)


# --- the perturbed autoencoder --------------------------------------------------------------------


def test_shares_the_digit_autoencoder_design():
    torch.manual_seed(0)
    ae = PerturbedAutoencoder(latent_dim=8, input_pert="noise", std=0.2)
    names = [n for n, _ in ae.named_children()]
    assert names == ["input_pert", "encoder", "decoder"]
    reference = DigitAutoencoder(latent_dim=8)
    for ours, theirs in [(ae.encoder, reference.encoder), (ae.decoder, reference.decoder)]:
        assert [type(m) for m in ours] == [type(m) for m in theirs]
        assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    # the classifier and the contrastive encoder use the same encoder design
    for model in (EncoderClassifier(latent_dim=8), ContrastiveEncoder(latent_dim=8)):
        assert [p.shape for p in model.encoder.parameters()] == \
            [p.shape for p in ae.encoder.parameters()]


def test_eval_mode_leaves_the_input_unperturbed():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 16, 16)
    for pert in ("noise", "mask"):
        ae = PerturbedAutoencoder(latent_dim=8, input_pert=pert).eval()
        with torch.no_grad():
            clean = ae.decoder(ae.encoder(x))
            assert torch.equal(ae(x), clean)
            assert torch.equal(ae(x), ae(x))  # deterministic
            ae.train()
            assert not torch.equal(ae(x), clean)  # training perturbs
            # encode never perturbs, in either mode
            assert torch.equal(ae.encode(x), ae.encoder(x))


def test_shapes_and_errors():
    ae = PerturbedAutoencoder(latent_dim=5)
    x = torch.rand(3, 1, 16, 16)
    assert ae.encode(x).shape == (3, 5)
    assert ae(x).shape == x.shape
    assert ae.decode(torch.zeros(2, 5)).shape == (2, 1, 16, 16)
    with pytest.raises(ShapeMismatchError, match="unsqueeze"):
        ae(torch.rand(3, 16, 16))
    with pytest.raises(InvalidParameterError, match="latent_dim"):
        PerturbedAutoencoder(latent_dim=0)
    with pytest.raises(InvalidParameterError, match="multiple of 4"):
        PerturbedAutoencoder(image_size=18)
    clf = EncoderClassifier(latent_dim=5, n_classes=3)
    assert clf(x).shape == (3, 3) and clf.encode(x).shape == (3, 5)
    assert [n for n, _ in clf.named_children()] == ["encoder", "head"]
    with pytest.raises(InvalidParameterError, match="n_classes"):
        EncoderClassifier(n_classes=1)
    # custom parts are used as given
    enc, dec = nn.Sequential(nn.Flatten(), nn.Linear(256, 4)), nn.Linear(4, 256)
    custom = PerturbedAutoencoder(enc, dec, latent_dim=4)
    assert custom.encoder is enc and custom.decoder is dec
    assert custom.encode(x).shape == (3, 4)


def test_training_perturbs_and_is_seeded(digits, tmp_path):
    images = digits[0][:256]

    def run(pert: str, seed: int, ckpt=None):
        torch.manual_seed(0)  # one initialisation for every run
        ae = PerturbedAutoencoder(latent_dim=8, input_pert=pert)
        history = train_autoencoder(ae, images, epochs=3, seed=seed, progress=False,
                                    checkpoint_dir=ckpt)
        return ae, history

    plain, plain_hist = run("identity", 0)
    noisy, noisy_hist = run("noise", 0, tmp_path / "ckpt")
    again, _ = run("noise", 0)
    other, _ = run("noise", 1)
    assert not noisy.training
    assert noisy_hist.loss[-1] < noisy_hist.loss[0]
    assert plain_hist.loss != noisy_hist.loss
    state = noisy.state_dict()
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())
    assert any(not torch.equal(state[k], v) for k, v in other.state_dict().items())
    assert [p.name for p in noisy_hist.checkpoints] == ["epoch_001.pt", "epoch_002.pt",
                                                        "epoch_003.pt"]
    last = torch.load(noisy_hist.checkpoints[-1], weights_only=True)
    assert all(torch.equal(last["state_dict"][k], v) for k, v in state.items())


class _Recorder(nn.Module):
    """A perturbation that records the mode it ran in and the batch it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, x.shape[0]))
        return x


def test_train_autoencoder_applies_the_perturbation_to_every_training_batch(digits):
    recorder = _Recorder()
    ae = PerturbedAutoencoder(latent_dim=4, input_pert=recorder)
    train_autoencoder(ae, digits[0][:100], epochs=2, batch_size=32, progress=False)
    assert recorder.calls == [(True, 32), (True, 32), (True, 32), (True, 4)] * 2
    assert not recorder.training  # the model is left in eval mode: no perturbation after


def test_encoder_classifier_learns(digits):
    images, labels = digits
    torch.manual_seed(0)
    clf = EncoderClassifier(latent_dim=16)
    history = train_classifier(clf, (images[:1300], labels[:1300]), epochs=6, progress=False)
    assert history.loss[-1] < history.loss[0] / 3
    assert evaluate_accuracy(clf, (images[1300:], labels[1300:])) > 0.85


@pytest.mark.slow
@pytest.mark.parametrize(("task", "pert", "level"), [("denoising", "noise", 0.5),
                                                     ("inpainting", "mask", 0.3)])
def test_perturbation_tasks_learn_to_undo_their_perturbation(digits, task, pert, level):
    # On perturbed held-out digits, the model trained to undo the perturbation reconstructs the
    # clean digit better than the plain autoencoder; mean over three seeds. (At the default
    # noise std 0.3 the plain autoencoder's bottleneck denoises nearly as well: docs/models.md.)
    images, _ = digits
    train_x, test_x = images[:1300], images[1300:]
    plain_errors, task_errors = [], []
    for seed in range(3):
        plain, _ = train_pretext("reconstruction", train_x, seed=seed, progress=False)
        trained, _ = train_pretext(task, train_x, seed=seed, progress=False, noise_std=level,
                                   mask_fraction=level)
        setting = {"std": level} if pert == "noise" else {"fraction": level}
        corrupt = make_perturbation(pert, **setting).train()
        torch.manual_seed(100 + seed)
        noisy = corrupt(test_x)
        with torch.no_grad():
            plain_errors.append(((plain(noisy) - test_x) ** 2).mean().item())
            task_errors.append(((trained(noisy) - test_x) ** 2).mean().item())
    assert sum(plain_errors) > 1.05 * sum(task_errors)


# --- pretext models and recipe --------------------------------------------------------------------


def test_pretext_models_share_their_initial_encoder():
    state = torch.random.get_rng_state()
    models = {task: pretext_model(task, latent_dim=8, seed=3) for task in PRETEXT_TASKS}
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG must be restored"
    reference = models["reconstruction"].encoder.state_dict()
    for task, model in models.items():
        assert callable(model.encode), task
        assert all(torch.equal(v, reference[k]) for k, v in model.encoder.state_dict().items())
    other = pretext_model("reconstruction", latent_dim=8, seed=4).encoder.state_dict()
    assert any(not torch.equal(v, reference[k]) for k, v in other.items())
    assert isinstance(models["denoising"].input_pert, GaussianNoise)
    assert isinstance(models["inpainting"].input_pert, RandomMask)
    assert reference.keys() == digit_encoder(8).state_dict().keys()
    with pytest.raises(InvalidParameterError, match="task"):
        pretext_model("jigsaw")


@pytest.mark.parametrize("task", PRETEXT_TASKS)
def test_train_pretext_trains_every_task(digits, task, tmp_path):
    images, labels = digits[0][:192], digits[1][:192]
    model, history = train_pretext(task, (images, labels), latent_dim=8, epochs=2, seed=0,
                                   progress=False, checkpoint_dir=tmp_path)
    assert not model.training
    assert history.epochs == 2 and len(history.checkpoints) == 2
    assert model.encode(images[:5]).shape == (5, 8)
    initial = pretext_model(task, latent_dim=8, seed=0).encoder.state_dict()
    assert any(not torch.equal(v, initial[k]) for k, v in model.encoder.state_dict().items())


def test_classification_pretext_needs_labels(digits):
    with pytest.raises(InvalidParameterError, match="labels"):
        train_pretext("classification", digits[0][:64], epochs=1, progress=False)
