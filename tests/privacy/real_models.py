"""The real models of the DP drop-in tests and benchmark, and a torch.func ground truth.

Each builder returns ``(model, batch, loss_fn)``: a small model from a config
(random weights, nothing downloaded), a dict of batched inputs, and
``loss_fn(model, batch) -> scalar`` as a user would write it (mean over the
batch). Models come from torchvision, timm, transformers and peft, installed
by ``scripts/install.sh``; a builder whose library is missing raises
``ImportError`` (tests skip on it).

torchvision: PyPI's torchvision 0.28.0 wheel is a CUDA build whose ``_C``
library cannot load next to the CPU torch, and its import then fails with
"operator torchvision::nms does not exist" (``torchvision/_meta_registrations.py``
registers fake kernels for ``nms``/``qnms`` even when ``_C`` did not load).
:func:`import_torchvision` defines those two op schemas first, without
kernels, as ``_C`` itself would; the models need neither op. timm and
transformers import torchvision too, so they go through the same function.
"""

from __future__ import annotations

import copy
import importlib

import torch
import torch.nn.functional as F
from torch import nn

_TV_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
               "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_tv_library = None  # keeps the schema registrations alive


def import_torchvision():
    """Import torchvision on a CPU torch whatever its wheel's build (see module docstring)."""
    global _tv_library
    if _tv_library is None and not hasattr(torch.ops.torchvision, "nms"):
        try:
            torch.ops.torchvision.nms
        except (AttributeError, RuntimeError):
            _tv_library = torch.library.Library("torchvision", "DEF")
            for schema in _TV_SCHEMAS:
                _tv_library.define(schema)
    return importlib.import_module("torchvision")


def _images(batch, gen, size=32, channels=3):
    return torch.randn(batch, channels, size, size, generator=gen)


def _labels(batch, gen, classes=10):
    return torch.randint(0, classes, (batch,), generator=gen)


def _classifier_loss(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["y"])


def _hf_loss(model, batch):
    return model(**batch).loss


def resnet18(batch=4, seed=0):
    """torchvision ResNet-18 (BatchNorm -> GroupNorm by ModuleValidator.fix), 32x32 inputs."""
    tv = import_torchvision()
    from modelsec_fast.privacy import ModuleValidator
    torch.manual_seed(seed)
    model = ModuleValidator.fix(tv.models.resnet18(num_classes=10))
    gen = torch.Generator().manual_seed(seed)
    return model, {"x": _images(batch, gen), "y": _labels(batch, gen)}, _classifier_loss


def vit(batch=4, seed=0, depth=2):
    """timm ViT-tiny, patch 4 on 32x32 images (root cls_token and pos_embed)."""
    import_torchvision()
    import timm
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=4, num_classes=10, depth=depth)
    gen = torch.Generator().manual_seed(seed)
    return model, {"x": _images(batch, gen), "y": _labels(batch, gen)}, _classifier_loss


def bert(batch=4, seed=0, seq=12, layers=2, hidden=32):
    """Hugging Face BERT for sequence classification, called without position ids."""
    import_torchvision()  # transformers imports torchvision when it is installed
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=3)
    model = BertForSequenceClassification(config)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (batch, seq), generator=gen)
    return model, {"input_ids": ids, "labels": _labels(batch, gen, 3)}, _hf_loss


def _gpt2_model(seed, layers, hidden):
    import_torchvision()  # transformers imports torchvision when it is installed
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_positions=64, n_embd=hidden, n_layer=layers,
                        n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def gpt2(batch=4, seed=0, seq=12, layers=2, hidden=32):
    """Hugging Face GPT-2 language model (Conv1D layers, lm_head tied to wte), no position ids."""
    model = _gpt2_model(seed, layers, hidden)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (batch, seq), generator=gen)
    return model, {"input_ids": ids, "labels": ids.clone()}, _hf_loss


def gpt2_lora(batch=4, seed=0, seq=12, layers=2, hidden=32, rank=8):
    """GPT-2 with peft LoRA (r=8) on c_attn: frozen base, frozen tied lm_head/wte."""
    import_torchvision()  # peft imports transformers' models, some of which import torchvision
    from peft import LoraConfig, get_peft_model
    model = _gpt2_model(seed, layers, hidden)
    config = LoraConfig(r=rank, lora_alpha=16, target_modules=["c_attn"], lora_dropout=0.0,
                        fan_in_fan_out=True)
    torch.manual_seed(seed + 1)
    model = get_peft_model(model, config)
    for name, p in model.named_parameters():  # LoRA's B starts at 0: give it a gradient path
        if "lora_B" in name:
            nn.init.normal_(p, std=0.02)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (batch, seq), generator=gen)
    return model, {"input_ids": ids, "labels": ids.clone()}, _hf_loss


class FunctionalLinear(nn.Module):
    """A custom layer that calls F.linear on its own parameters (no rule)."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / d_in ** 0.5)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class CustomWithRootParameter(nn.Module):
    """F.linear module, a root-level additive parameter and a root-level scale."""

    def __init__(self, d=8, classes=4, steps=5):
        super().__init__()
        self.offset = nn.Parameter(torch.randn(1, steps, d) * 0.1)
        self.scale = nn.Parameter(torch.ones(d))
        self.inner = FunctionalLinear(d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = torch.tanh(self.inner(x + self.offset)) * self.scale
        return self.head(h.mean(1))


def custom(batch=4, seed=0):
    torch.manual_seed(seed)
    model = CustomWithRootParameter()
    gen = torch.Generator().manual_seed(seed)
    return model, {"x": torch.randn(batch, 5, 8, generator=gen),
                   "y": _labels(batch, gen, 4)}, _classifier_loss


class BilinearNet(nn.Module):
    def __init__(self, d1=6, d2=5, classes=3):
        super().__init__()
        self.bil = nn.Bilinear(d1, d2, 7)
        self.head = nn.Linear(7, classes)

    def forward(self, x1, x2):
        return self.head(torch.tanh(self.bil(x1, x2)))


def bilinear(batch=4, seed=0):
    torch.manual_seed(seed)
    model = BilinearNet()
    gen = torch.Generator().manual_seed(seed)
    batch_ = {"x1": torch.randn(batch, 6, generator=gen), "x2": torch.randn(batch, 5, generator=gen),
              "y": _labels(batch, gen, 3)}
    return model, batch_, lambda m, b: F.cross_entropy(m(b["x1"], b["x2"]), b["y"])


MODELS = {"resnet18": resnet18, "vit": vit, "bert": bert, "gpt2": gpt2,
          "gpt2_lora": gpt2_lora, "custom": custom, "bilinear": bilinear}


# ------------------------------------------------------------------ parity
def _sample(batch: dict, i: int) -> dict:
    return {k: v[i:i + 1] for k, v in batch.items()}


def per_sample_truth(model, batch, loss_fn):
    """name -> (B, *shape) per-sample gradients from torch.func.grad, one sample at a time."""
    model = copy.deepcopy(model)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def one(ps, sample):
        return loss_fn(lambda *a, **k: torch.func.functional_call(
            model, (ps, frozen, buffers), a, k), sample)

    size = next(iter(batch.values())).shape[0]
    grads = [torch.func.grad(one)(params, _sample(batch, i)) for i in range(size)]
    return {n: torch.stack([g[n] for g in grads]) for n in params}


def clipped_mean(per_sample: dict, max_grad_norm: float, expected_batch_size: int) -> dict:
    """(sum_i c_i g_i) / E[B], c_i = min(1, C / (||g_i|| + 1e-6)) over all parameters."""
    norms = torch.sqrt(sum(g.double().flatten(1).square().sum(1) for g in per_sample.values()))
    c = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return {n: torch.einsum("i,i...->...", c.to(g.dtype), g) / expected_batch_size
            for n, g in per_sample.items()}


def engine_update(model, batch, loss_fn, *, max_grad_norm, expected_batch_size):
    """p.grad after one private step of the engine (noise 0); name -> tensor."""
    from modelsec_fast.privacy import ModuleValidator
    from modelsec_fast.privacy.optimizer import DPOptimizer
    from modelsec_fast.privacy.per_sample import PrivateModule
    model = copy.deepcopy(model)
    ModuleValidator.validate(model, strict=True)
    pm = PrivateModule(model)
    opt = DPOptimizer(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0),
                      noise_multiplier=0.0, max_grad_norm=max_grad_norm,
                      expected_batch_size=expected_batch_size)
    opt.zero_grad()
    loss_fn(pm, batch).backward()
    opt.step()
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    pm.cleanup()
    return out


def parity_problems(model, batch, loss_fn, *, rtol=1e-4, atol=1e-5, atol_floor=1e-9,
                    device=None):
    """Mismatches between the engine and the torch.func ground truth, one line each.

    C is the median per-sample norm, so that some samples are clipped and some not.
    Entries near 0 are compared to ``atol`` times the tensor's largest entry, or
    ``atol_floor`` for a tensor whose exact gradient is 0 (an attention key bias).
    """
    size = next(iter(batch.values())).shape[0]
    if device is not None:
        model = copy.deepcopy(model).to(device)
        batch = {k: v.to(device) for k, v in batch.items()}
    per_sample = per_sample_truth(model, batch, loss_fn)
    norms = torch.sqrt(sum(g.double().flatten(1).square().sum(1) for g in per_sample.values()))
    max_grad_norm = float(norms.median())
    truth = clipped_mean(per_sample, max_grad_norm, size)
    got = engine_update(model, batch, loss_fn, max_grad_norm=max_grad_norm,
                        expected_batch_size=size)
    problems = []
    for name, t in truth.items():
        g = got[name]
        if not torch.allclose(g, t, rtol=rtol, atol=max(atol * float(t.abs().max()), atol_floor)):
            problems.append(f"{name}: max abs err {(g - t).abs().max().item():.3e}, "
                            f"|truth| max {t.abs().max().item():.3e}")
    return problems


class LSTMTextClassifier(nn.Module):
    """Embedding, one nn.LSTM layer and a linear head (ModuleValidator.fix swaps in DPLSTM)."""

    def __init__(self, vocab=1000, dim=64, hidden=128, classes=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.lstm(self.emb(x))
        return self.head(out[:, -1])


def lstm_text(batch=4, seed=0, seq=32):
    torch.manual_seed(seed)
    model = LSTMTextClassifier()
    gen = torch.Generator().manual_seed(seed)
    return model, {"x": torch.randint(0, 1000, (batch, seq), generator=gen),
                   "y": _labels(batch, gen, 2)}, _classifier_loss


MODELS["lstm_text"] = lstm_text
