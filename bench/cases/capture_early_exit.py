"""Early exit: capturing an early layer of a deep model costs only the layers up to it.

Two deep models with random weights:

* a GPT-2-shaped transformer: 12 blocks, width 128, 4 heads, 32 tokens per sequence
  (``transformers.GPT2Model`` from a ``GPT2Config`` when transformers is installed, else an
  equivalent pre-LayerNorm transformer of our own), capturing the output of block 1 (``h.1``);
* a CIFAR ResNet-18 (3x32x32 inputs, a 3x3 stem, stages of widths 64/128/256/512 with two basic
  blocks each, BatchNorm and in-place ReLUs as in torchvision; our own definition), capturing its
  first stage (``layer1``, 64x32x32 values per image). On a CPU the first stage costs about a
  third of the pass (its 64-channel convolutions at 32x32 run less efficiently than the later,
  wider ones), so stopping after it can save at most about 2.8x.

Ours: ``capture(model, layer, stop_early=True)`` with ``cap.run(model, batch)`` for each batch: the
pass ends once the layer has produced its output. The peer: tdhook's ``ActivationCaching`` on the
same layer (it runs the whole model), and a plain whole forward pass without hooks. Both sides
return ``{layer: (N, ...)}`` for every batch concatenated. ``stop_early`` learns how often each
layer runs from the first pass of a model and layer set (that pass runs whole); the warm-up run
does it, so the timed runs measure the steady state, and the ``cold`` case forgets the learned
counts before every run to show what a first call costs.

Every run of either side uses one torch thread (restored afterwards): on a shared 2-core machine,
two-thread runs measured the other processes' load more than the libraries (a whole GPT-2 pass
varied from 0.3 s to 6.6 s), while the work each side does is what is compared here.

Agreement: the largest absolute difference between the two sides' tensors (0: the same bits).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bench.runner import Case
from latentsurgeon.activations import capture
from latentsurgeon.hooks.stop import forget_calls

# -- models ----------------------------------------------------------------------------------------


class _Block(nn.Module):
    """A GPT-2 block (pre-LayerNorm, causal self-attention, GELU MLP)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _TinyGPT(nn.Module):
    """GPT2Model's layout (``wte``, ``wpe``, ``h.<i>``, ``ln_f``) without transformers."""

    def __init__(self, layers: int, width: int, heads: int, vocab: int, positions: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(positions, width)
        self.h = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


def gpt2_shaped(layers: int = 12, width: int = 128, heads: int = 4, vocab: int = 1000,
                positions: int = 64) -> tuple[nn.Module, str]:
    """A random GPT-2-shaped model and where it comes from."""
    torch.manual_seed(0)
    try:
        import transformers
    except ImportError:
        return _TinyGPT(layers, width, heads, vocab, positions).eval(), "own GPT-2 equivalent"
    config = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=heads,
                                     vocab_size=vocab, n_positions=positions, bos_token_id=0,
                                     eos_token_id=0)
    return transformers.GPT2Model(config).eval(), "transformers GPT2Model"


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convs, BatchNorm, in-place ReLUs, ``out +=``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class CifarResNet(nn.Module):
    """ResNet-18's layout for 3x32x32 inputs: a 3x3 stem, four stages of two basic blocks."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512), classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, c_in = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width)))
            c_in = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet() -> nn.Module:
    torch.manual_seed(0)
    return CifarResNet().eval()


# -- runners ---------------------------------------------------------------------------------------


def _one_thread(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def _ours(model: nn.Module, layer: str, batches: list[torch.Tensor], cold: bool = False
          ) -> Callable[[], dict[str, torch.Tensor]]:
    @torch.no_grad()
    def run() -> dict[str, torch.Tensor]:
        if cold:
            forget_calls(model)
        with capture(model, layer, stop_early=True, accumulate=True) as cap:
            for batch in batches:
                cap.run(model, batch)
        return cap.activations

    return _one_thread(run)


def _tdhook(model: nn.Module, layer: str, batches: list[torch.Tensor]
            ) -> Callable[[], dict[str, torch.Tensor]]:
    try:
        from tdhook.latent import ActivationCaching
        from tensordict import TensorDict
    except ImportError as exc:  # a peer, not a dependency of the library
        raise SystemExit(f"This benchmark needs tdhook: pip install tdhook ({exc}).") from exc
    pattern = layer.replace(".", r"\.") + "$"  # tdhook matches at the start of names

    @torch.no_grad()
    def run() -> dict[str, torch.Tensor]:
        parts = []
        with ActivationCaching(pattern).prepare(model) as hooked:
            for batch in batches:
                out = hooked(TensorDict({"input": batch}, batch_size=[len(batch)]))
                parts.append(out["cache", layer])
        return {layer: torch.cat(parts)}

    return _one_thread(run)


def _plain(model: nn.Module, batches: list[torch.Tensor]) -> Callable[[], list]:
    @torch.no_grad()
    def run() -> list:
        return [model(batch) for batch in batches]

    return _one_thread(run)


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if sorted(a) != sorted(b):
        return float("inf")
    return max(float((a[k].float() - b[k].float()).abs().max()) if a[k].shape == b[k].shape
               else float("inf") for k in a)


def cases() -> list[Case]:
    gpt, source = gpt2_shaped()
    ids = torch.randint(0, 1000, (64, 32), generator=torch.Generator().manual_seed(0))
    token_batches = list(ids.split(16))
    resnet = cifar_resnet()
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    image_batches = list(images.split(32))
    gpt_desc = (f"GPT-2-shaped ({source}: 12 blocks, width 128, 4 heads, random weights), 64 "
                "sequences of 32 tokens in batches of 16, output of block 1 (h.1) captured, one "
                "torch thread per run")
    resnet_desc = ("CIFAR ResNet-18 (our own definition; widths 64/128/256/512, random weights), "
                   "64 images 3x32x32 in batches of 32, first stage (layer1, 64x32x32) captured, "
                   "one torch thread per run")
    return [
        Case("capture_gpt2_early_block_vs_tdhook", _ours(gpt, "h.1", token_batches),
             _tdhook(gpt, "h.1", token_batches), "tdhook ActivationCaching",
             gpt_desc + "; ours stops each pass after h.1, tdhook runs all 12 blocks", ">= 4",
             _max_abs_diff),
        Case("capture_gpt2_early_block_vs_plain_forward", _ours(gpt, "h.1", token_batches),
             _plain(gpt, token_batches), "plain forward (no hooks, whole model)",
             gpt_desc + "; the peer is the whole model without hooks", "reported", None),
        Case("capture_gpt2_early_block_cold_vs_tdhook", _ours(gpt, "h.1", token_batches, True),
             _tdhook(gpt, "h.1", token_batches), "tdhook ActivationCaching",
             gpt_desc + "; cold: every run first learns the call counts with one whole pass "
             "(4 batches: 1 whole pass + 3 stopped)", "reported", _max_abs_diff),
        Case("capture_resnet_first_stage_vs_tdhook", _ours(resnet, "layer1", image_batches),
             _tdhook(resnet, "layer1", image_batches), "tdhook ActivationCaching",
             resnet_desc + "; ours stops each pass after layer1", ">= 2", _max_abs_diff),
    ]
