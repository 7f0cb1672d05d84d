"""The models people train today, out of the box, against a torch.func ground truth (noise 0).

torchvision ResNet-18 (after ModuleValidator.fix), timm ViT (root cls_token and
pos_embed, timm's LayerNorm), Hugging Face BERT and GPT-2 called without
position ids (a (1, T) position embedding broadcast over the batch; GPT-2's
Conv1D and its lm_head tied to wte), GPT-2 with peft LoRA (frozen tied head),
a custom F.linear module with root-level parameters, and nn.Bilinear.
float32: rtol 1e-4; float64 where cheap: rtol 1e-10. Libraries come from
scripts/install.sh; a missing one skips its test.
"""

import warnings

import pytest
import torch

import real_models as rm

F32 = dict(rtol=1e-4, atol=1e-5, atol_floor=1e-9)
F64 = dict(rtol=1e-10, atol=1e-10, atol_floor=1e-15)


def _build(name, **kw):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rm.MODELS[name](**kw)
    except ImportError as err:
        pytest.skip(f"{name} needs a library that is not installed: {err}")


@pytest.mark.parametrize("name", ["resnet18", "vit", "bert", "gpt2", "gpt2_lora", "custom",
                                  "bilinear"])
def test_update_equals_torch_func_ground_truth_float32(name):
    model, batch, loss_fn = _build(name)
    problems = rm.parity_problems(model, batch, loss_fn, **F32)
    assert not problems, "engine != torch.func ground truth:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", ["gpt2", "gpt2_lora", "custom", "bilinear"])
def test_update_equals_torch_func_ground_truth_float64(name):
    model, batch, loss_fn = _build(name)
    model = model.double()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    problems = rm.parity_problems(model, batch, loss_fn, **F64)
    assert not problems, "engine != torch.func ground truth:\n" + "\n".join(problems)


def test_vit_root_parameters_take_the_cheap_broadcast_path_and_layernorm_its_rule():
    model, batch, loss_fn = _build("vit")
    from modelsec_fast.privacy.per_sample import PrivateModule, rule_for
    from modelsec_fast.privacy.per_sample.generic import GENERIC
    from modelsec_fast.privacy.per_sample.norms import LayerNormRule
    layer_norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert layer_norms and type(layer_norms[0]) is not torch.nn.LayerNorm  # timm's subclass
    assert all(isinstance(rule_for(m), LayerNormRule) for m in layer_norms)
    from modelsec_fast.privacy.optimizer import DPOptimizer
    pm = PrivateModule(model)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0,
                      max_grad_norm=1.0, expected_batch_size=4)
    generic = [r.name for r in pm.capture_state.recorders if r.rule is GENERIC]
    assert generic == [""]  # only the root (cls_token, pos_embed)
    with pytest.MonkeyPatch.context() as mp:  # no vmap: the additive formula suffices
        mp.setattr(torch.func, "vmap", lambda *a, **k: pytest.fail("vmap was used"))
        loss_fn(pm, batch).backward()
    opt.step()
    assert model.cls_token.grad is not None and model.pos_embed.grad is not None
    pm.cleanup()


def test_lora_with_trainable_base_warns_with_the_parameter_count():
    model, batch, loss_fn = _build("gpt2_lora")
    from modelsec_fast.privacy import ModuleValidator
    base = next(m for m in model.modules() if hasattr(m, "lora_A")).base_layer
    base.weight.requires_grad_(True)
    with pytest.warns(UserWarning, match=rf"trains {base.weight.numel()} parameters of its base"):
        ModuleValidator.validate(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["vit", "gpt2", "gpt2_lora", "custom", "bilinear"])
def test_update_equals_torch_func_ground_truth_on_cuda(name):
    model, batch, loss_fn = _build(name)
    problems = rm.parity_problems(model, batch, loss_fn, device="cuda", **F32)
    assert not problems, "engine != torch.func ground truth on CUDA:\n" + "\n".join(problems)
