"""Tests for models/upanets.py (UPANets) and hubconf.py.

Reference data in tests/data/ was produced with the original authors' code:

* state_dict_layouts.json: parameter names, order, shapes and counts for six configs;
* forward_filters8_classes10_img32.pt: weights, an input batch and the original's
  eval-mode and train-mode logits for it;
* original_ckpt_filters8_classes10_img32.pth: a checkpoint as the original training
  script saves it ({"net": "module."-prefixed state dict, "acc", "epoch"}).
"""
from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import FIXTURES, REPO_ROOT

MODEL_FILE = REPO_ROOT / "models" / "upanets.py"


from models import upanets as U  # noqa: E402
from models.upanets import (  # noqa: E402
    PixelLinear,
    UPANets,
    _layer_norm_chw,
    clean_state_dict,
    load_weights,
    upanets16,
    upanets32,
    upanets64,
)

LAYOUTS_FILE = FIXTURES / "state_dict_layouts.json"
FORWARD_FILE = FIXTURES / "forward_filters8_classes10_img32.pt"
ORIGINAL_CKPT_FILE = FIXTURES / "original_ckpt_filters8_classes10_img32.pth"

with open(LAYOUTS_FILE) as _fh:
    LAYOUTS: dict = json.load(_fh)


def _args(cfg: dict) -> tuple[int, int, int, int]:
    a = cfg["args"]
    return a["filters"], a["num_classes"], a["blocks"], a["img"]


@pytest.fixture(scope="module", autouse=True)
def _one_intra_op_thread():
    """Run this module's tiny tensors on one thread.

    On a loaded 2-core machine, OpenMP parallel regions over such small tensors
    spend far longer waiting for a second thread than computing (a forward of a
    filters=4 model took ~2.5 s with two threads against ~10 ms with one). Results
    are the same; the previous setting is restored afterwards.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def reference() -> dict:
    ref = torch.load(FORWARD_FILE, map_location="cpu", weights_only=True)
    assert ref["args"] == {"filters": 8, "num_classes": 10, "blocks": 1, "img": 32}
    assert tuple(ref["input"].shape) == (4, 3, 32, 32)
    assert tuple(ref["logits_eval"].shape) == (4, 10)
    assert tuple(ref["logits_train"].shape) == (4, 10)
    return ref


def _reference_model(reference: dict) -> UPANets:
    """A fresh filters=8 model holding the reference weights (train mode, as built)."""
    a = reference["args"]
    model = UPANets(a["filters"], a["num_classes"], a["blocks"], a["img"])
    model.load_state_dict(reference["state_dict"], strict=True)
    return model


@pytest.fixture
def ref_model(reference) -> UPANets:
    return _reference_model(reference)


# --------------------------------------------------------------------------------------
# 1. State dict layout of the original, for all six configs
# --------------------------------------------------------------------------------------


def _params_and_gflops(filters: int, num_classes: int, img: int) -> tuple[int, float]:
    """Parameters and GFLOPs of one eval-mode forward pass of one image, counted by torch.utils.flop_counter as
    main.py counts them (a multiply-add is 2 FLOPs); on the meta device, where nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = UPANets(filters, num_classes, 1, img).eval()
        x = torch.zeros(1, 3, img, img)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 1e9


def test_readme_model_table_matches_the_models():
    """The README's table of parameters and GFLOPs ("## The model") is what the models give: parameter counts
    exactly, GFLOPs to the printed precision (the 32x32 figure serves CIFAR-10 and CIFAR-100)."""
    section = (REPO_ROOT / "README.md").read_text().split("\n## The model\n", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|")]
    header, table = rows[0], {row[0]: dict(zip(rows[0], row)) for row in rows[2:]}
    assert header[1:] == ["params (CIFAR-10)", "params (CIFAR-100)", "GFLOPs / image, 32x32",
                          "params (Tiny ImageNet)", "GFLOPs / image, 64x64"], header
    assert sorted(table) == ["UPANets16", "UPANets32", "UPANets64"]
    wrong = []
    for name, row in table.items():
        filters = int(name.removeprefix("UPANets"))
        (p10, f10), (p100, f100), (p200, f200) = (_params_and_gflops(filters, classes, img)
                                                  for classes, img in ((10, 32), (100, 32), (200, 64)))
        checks = [("params (CIFAR-10)", [f"{p10:,}"]), ("params (CIFAR-100)", [f"{p100:,}"]),
                  ("GFLOPs / image, 32x32", [f"{f10:.3f}", f"{f100:.3f}"]),
                  ("params (Tiny ImageNet)", [f"{p200:,}"]), ("GFLOPs / image, 64x64", [f"{f200:.3f}"])]
        wrong += [f"{name} {column}: README {row[column]}, model {' or '.join(values)}"
                  for column, values in checks if row[column] not in values]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_state_dict_layout_matches_original(name):
    cfg = LAYOUTS[name]
    torch.manual_seed(0)
    model = UPANets(*_args(cfg))

    expected = [(key, list(shape)) for key, shape in cfg["state_dict"]]
    actual = [(key, list(t.shape)) for key, t in model.state_dict().items()]
    # Same keys, same order, same shapes.
    assert [k for k, _ in actual] == [k for k, _ in expected]
    assert actual == expected
    assert sum(p.numel() for p in model.parameters()) == cfg["num_parameters"]

    # A state dict built from the JSON shapes alone loads with strict=True, and its
    # values end up in the model.
    gen = torch.Generator().manual_seed(1)
    sd = {}
    for key, shape in expected:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7, dtype=torch.long)
        else:
            sd[key] = torch.randn(shape, generator=gen)
    result = model.load_state_dict(sd, strict=True)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    loaded = model.state_dict()
    for key in (expected[0][0], expected[-1][0], "linear.weight", "spa4.sp_ffc.0.weight"):
        assert torch.equal(loaded[key], sd[key]), key


# --------------------------------------------------------------------------------------
# 2. Logits of the original code
# --------------------------------------------------------------------------------------


def test_eval_logits_match_original(reference, ref_model):
    ref_model.eval()
    with torch.no_grad():
        logits = ref_model(reference["input"])
    assert logits.dtype == torch.float32
    assert logits.shape == reference["logits_eval"].shape
    torch.testing.assert_close(logits, reference["logits_eval"], rtol=0, atol=1e-5)


def test_train_logits_match_original(reference, ref_model):
    ref_model.train()
    with torch.no_grad():
        logits = ref_model(reference["input"])
    assert logits.shape == reference["logits_train"].shape
    torch.testing.assert_close(logits, reference["logits_train"], rtol=0, atol=1e-5)
    # Eval and train logits really differ (so the two checks are not the same check).
    assert (reference["logits_train"] - reference["logits_eval"]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------
# 3. Checkpoint loading helpers
# --------------------------------------------------------------------------------------


def test_load_weights_of_the_original_checkpoint(reference):
    raw = torch.load(ORIGINAL_CKPT_FILE, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw["net"])  # the file really is prefixed

    model = UPANets(8, 10, 1, 32)
    returned = load_weights(model, raw["net"])
    assert returned is model
    for key, value in raw["net"].items():
        assert torch.equal(model.state_dict()[key[len("module."):]], value), key
    model.eval()
    with torch.no_grad():
        logits = model(reference["input"])
    torch.testing.assert_close(logits, reference["logits_eval"], rtol=0, atol=1e-5)


def test_load_weights_strict_rejects_wrong_config():
    raw = torch.load(ORIGINAL_CKPT_FILE, map_location="cpu", weights_only=True)
    with pytest.raises(RuntimeError):
        load_weights(UPANets(16, 10, 1, 32), raw["net"])


def test_clean_state_dict_strips_wrapper_prefixes():
    t = [torch.full((1,), float(i)) for i in range(7)]
    sd = {
        "module.a.weight": t[0],
        "_orig_mod.b.weight": t[1],
        "module._orig_mod.c.weight": t[2],
        "_orig_mod.module.d.weight": t[3],
        "module.module._orig_mod.e.weight": t[4],
        "f.module.weight": t[5],  # not a prefix: kept as is
        "g._orig_mod.bias": t[6],
    }
    cleaned = clean_state_dict(sd)
    assert list(cleaned) == [
        "a.weight",
        "b.weight",
        "c.weight",
        "d.weight",
        "e.weight",
        "f.module.weight",
        "g._orig_mod.bias",
    ]
    for value, original in zip(cleaned.values(), t):
        assert value is original
    assert "module.a.weight" in sd  # input not modified
    assert clean_state_dict({}) == {}


# --------------------------------------------------------------------------------------
# 4. models/upanets.py can be copied into another project on its own
# --------------------------------------------------------------------------------------


def test_model_file_runs_standalone(tmp_path):
    shutil.copy(MODEL_FILE, tmp_path / "upanets.py")
    code = (
        "import torch, upanets\n"
        "print(upanets.__file__)\n"
        "torch.manual_seed(0)\n"
        "m = upanets.upanets16().eval()\n"
        "with torch.no_grad():\n"
        "    y = m(torch.randn(2, 3, 32, 32))\n"
        "print(tuple(y.shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert Path(lines[0]).resolve() == (tmp_path / "upanets.py").resolve()
    assert lines[-1] == "(2, 10)"


def test_model_file_imports_only_torch_and_stdlib():
    """torch and the standard library only; the registry is imported relatively inside a try whose ImportError
    handler stands in for it, so that a copy of the file alone works (test_model_file_runs_standalone)."""
    tree = ast.parse(MODEL_FILE.read_text(), filename=str(MODEL_FILE))
    guarded = {id(node) for handler in ast.walk(tree) if isinstance(handler, ast.Try)
               and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in handler.handlers)
               for node in handler.body}
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            assert node.module == "_registry" and id(node) in guarded, f"relative import on line {node.lineno}"
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert "torch" in roots
    non_stdlib = {r for r in roots if r not in sys.stdlib_module_names}
    assert non_stdlib == {"torch"}, f"imports outside torch and the stdlib: {non_stdlib - {'torch'}}"
    assert "models" not in roots


# --------------------------------------------------------------------------------------
# 5. Named builders
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder, filters", [(upanets16, 16), (upanets32, 32), (upanets64, 64)])
def test_named_builders_defaults(builder, filters):
    model = builder()
    assert isinstance(model, UPANets)
    assert (model.filters, model.num_classes, model.blocks, model.img) == (filters, 10, 1, 32)
    assert model.linear.out_features == 10
    assert model.linear.in_features == 31 * filters
    assert model.root[0].out_channels == 2 * filters


def test_named_builder_keywords_honoured():
    model = upanets16(num_classes=100, img=64, blocks=2)
    assert (model.filters, model.num_classes, model.blocks, model.img) == (16, 100, 2, 64)
    assert model.linear.out_features == 100
    assert model.spa0.sp_ffc[0].weight.numel() == 64 * 64
    assert model.spa4.sp_ffc[0].weight.numel() == 8 * 8
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        assert len(stage) == 1 + 8


def test_named_builders_match_layouts():
    model = upanets16(num_classes=200, img=64)
    cfg = LAYOUTS["filters16_classes200_blocks1_img64"]
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [
        (k, list(s)) for k, s in cfg["state_dict"]
    ]


# --------------------------------------------------------------------------------------
# 6. Errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(filters=10, blocks=1), "filters=10"),
        (dict(filters=12, blocks=2), "filters=12"),
        (dict(filters=0, blocks=1), "filters=0"),
        (dict(filters=-4, blocks=1), "filters=-4"),
        (dict(filters=8, blocks=0), "got 0"),
        (dict(filters=8, blocks=1, img=7), "got 7"),
        (dict(filters=8, blocks=1, num_classes=0), "got 0"),
    ],
)
def test_bad_config_raises(kwargs, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        UPANets(**kwargs)


def test_bad_config_messages_name_the_parameter():
    with pytest.raises(ValueError, match="blocks"):
        UPANets(8, blocks=0)
    with pytest.raises(ValueError, match="img"):
        UPANets(8, img=7)
    with pytest.raises(ValueError, match=r"4\*blocks = 8"):
        UPANets(12, blocks=2)


@pytest.fixture(scope="module")
def small_model() -> UPANets:
    torch.manual_seed(0)
    return UPANets(4, 10, 1, 32).eval()


def test_wrong_image_size_raises(small_model):
    with pytest.raises(ValueError) as info:
        small_model(torch.randn(2, 3, 64, 64))
    msg = str(info.value)
    assert "32" in msg and "64" in msg
    assert "32x32" in msg and "64x64" in msg
    with pytest.raises(ValueError, match="32x31"):
        small_model(torch.randn(1, 3, 32, 31))


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (3, 32, 32), (2, 4, 32, 32), (1, 2, 3, 32, 32)])
def test_wrong_input_rank_or_channels_raises(small_model, shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        small_model(torch.randn(*shape))


# --------------------------------------------------------------------------------------
# 7. Odd image sizes the original accepts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("img", [8, 9, 33, 35, 37])
def test_odd_image_sizes(img):
    torch.manual_seed(img)
    model = UPANets(4, 7, 1, img)
    assert model.spa2.img == img // 2 and model.spa3.img == img // 4 and model.spa4.img == img // 8
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        y_train = model(x)
        y_eval = model.eval()(x)
    for y in (y_train, y_eval):
        assert y.shape == (2, 7)
        assert torch.isfinite(y).all()


# --------------------------------------------------------------------------------------
# 8. The fast channel mix, memory formats and autocast
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pixel_linear_equals_linear_over_channels(bias, channels_last):
    torch.manual_seed(0)
    layer = PixelLinear(5, 7, bias=bias)
    assert isinstance(layer, nn.Linear) and layer.weight.shape == (7, 5)
    x = torch.randn(2, 5, 4, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.linear(x.permute(0, 2, 3, 1), layer.weight, layer.bias).permute(0, 3, 1, 2)
    out = layer(x)
    assert out.shape == (2, 7, 4, 6)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_channels_last_matches_contiguous(reference, ref_model):
    ref_model.eval()
    cl_model = copy.deepcopy(ref_model).to(memory_format=torch.channels_last)
    assert cl_model.root[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = reference["input"]
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    with torch.no_grad():
        y = ref_model(x)
        y_cl = cl_model(x_cl)
    torch.testing.assert_close(y_cl, y, rtol=0, atol=1e-5)
    torch.testing.assert_close(y_cl, reference["logits_eval"], rtol=0, atol=1e-5)


def test_bf16_autocast_close_to_fp32(reference, ref_model):
    ref_model.eval()
    x = reference["input"]
    with torch.no_grad():
        y32 = ref_model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = ref_model(x)
    assert y16.dtype == torch.bfloat16
    assert y16.shape == y32.shape
    assert torch.isfinite(y16).all()
    rel = (y16.float() - y32).abs().max() / y32.abs().max()
    assert rel < 0.05, f"bf16 autocast output off by {rel:.3g} of the fp32 output's range"
    assert (y16.float().argmax(1) == y32.argmax(1)).float().mean() >= 0.75


@pytest.mark.parametrize("channels_last", [False, True])
def test_layer_norm_chw_equals_layer_norm_and_keeps_the_memory_format(channels_last):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 5, 7) * 3 + 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.layer_norm(x.contiguous(), x.shape[1:])
    out = _layer_norm_chw(x)
    assert out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # (N, C, 1, 1) is what the ExC head normalises.
    v = torch.randn(4, 9, 1, 1)
    torch.testing.assert_close(_layer_norm_chw(v), F.layer_norm(v, v.shape[1:]), rtol=0, atol=1e-5)


def test_channels_last_training_step_matches_nchw_and_keeps_gradients_channels_last():
    torch.manual_seed(0)
    model = UPANets(8, 10, 1, 16).train()
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16)
    target = torch.tensor([1, 7, 3, 0])
    checked, channels_first_grads = [], []

    def watch_gradient(name: str, output: torch.Tensor) -> None:
        def check_layout(grad: torch.Tensor) -> None:
            # Channels innermost (stride 1), as channels_last tensors and their channel slices have;
            # an NCHW gradient would send the rest of the backward pass through layout copies.
            checked.append(name)
            if grad.stride(1) != 1:
                channels_first_grads.append(name)

        if output.shape[-1] > 1:  # (N, C, 1, 1) maps are both layouts at once
            output.register_hook(check_layout)

    for name, module in cl_model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, U.CPA, U.UPABlock)):
            module.register_forward_hook(lambda m, i, out, name=name: watch_gradient(name, out))
    losses = []
    for net, inputs in ((model, x), (cl_model, x.contiguous(memory_format=torch.channels_last))):
        features = net.forward_features(inputs)
        loss = F.cross_entropy(net.forward_head(features), target)
        loss.backward()
        losses.append(loss)
        if net is cl_model:
            assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features)
    assert len(checked) > 100 and channels_first_grads == []
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-5)
    cl_params = dict(cl_model.named_parameters())
    for name, param in model.named_parameters():
        # Summation order differs between layouts; the gradients of biases that a layer norm
        # follows are rounding noise (about 2e-5 here), so the bound is absolute.
        torch.testing.assert_close(cl_params[name].grad, param.grad, rtol=1e-3, atol=1e-4, msg=name)
    cl_buffers = dict(cl_model.named_buffers())
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(cl_buffers[name], buffer, rtol=0, atol=1e-5, msg=name)


# --------------------------------------------------------------------------------------
# 9. Forward and backward
# --------------------------------------------------------------------------------------


def test_train_forward_backward_gives_finite_grads_everywhere():
    torch.manual_seed(0)
    model = UPANets(4, 10, 1, 16).train()
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([1, 7])
    loss = F.cross_entropy(model(x), target)
    assert torch.isfinite(loss)
    loss.backward()
    params = dict(model.named_parameters())
    assert len(params) > 0
    missing = [name for name, p in params.items() if p.grad is None]
    assert missing == []
    not_finite = [name for name, p in params.items() if not torch.isfinite(p.grad).all()]
    assert not_finite == []
    assert params["linear.weight"].grad.abs().sum() > 0
    assert params["root.0.weight"].grad.abs().sum() > 0


def test_train_mode_updates_batchnorm_stats(reference, ref_model):
    before = ref_model.bn.running_mean.clone()
    ref_model.train()
    with torch.no_grad():
        ref_model(reference["input"])
    assert not torch.equal(before, ref_model.bn.running_mean)
    assert int(ref_model.bn.num_batches_tracked) == int(reference["state_dict"]["bn.num_batches_tracked"]) + 1


def test_eval_batch_of_one(reference, ref_model):
    ref_model.eval()
    with torch.no_grad():
        y = ref_model(reference["input"][:1])
    assert y.shape == (1, 10)
    torch.testing.assert_close(y, reference["logits_eval"][:1], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------
# 10. torch.compile
# --------------------------------------------------------------------------------------


def _smallest_eval_model() -> tuple[UPANets, torch.Tensor, torch.Tensor]:
    """The smallest valid UPANets (filters 4, 8x8 images) in eval mode, an input batch and its eager output."""
    torch.manual_seed(0)
    model = UPANets(4, 10, 1, 8).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        return model, x, model(x)


def _compile_unsupported_reason() -> str | None:
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile (dynamo) is not supported on Python {sys.version.split()[0]}"
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        return f"torch.compile's inductor CPU backend needs a C++ compiler; {cxx!r} not found"
    return None


@pytest.mark.skipif(_compile_unsupported_reason() is not None, reason=str(_compile_unsupported_reason()))
def test_torch_compile_matches_eager_and_state_dict_round_trips():
    import torch._inductor.config as inductor_config

    model, x, expected = _smallest_eval_model()

    start = time.perf_counter()
    # Scalar (non-vectorised) C++ kernels compile about twice as fast from a cold cache;
    # the graph capture and lowering tested here are the same.
    try:
        with inductor_config.patch({"cpp.vec_isa_ok": False}):
            compiled = torch.compile(model)
            with torch.no_grad():
                out = compiled(x)
        elapsed = time.perf_counter() - start
    finally:
        torch._dynamo.reset()
    print(f"torch.compile + first call: {elapsed:.1f} s")

    assert out.shape == (2, 10)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)

    sd = compiled.state_dict()
    assert all(key.startswith("_orig_mod.") for key in sd)
    assert list(clean_state_dict(sd)) == list(model.state_dict())

    fresh = UPANets(4, 10, 1, 8)
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(sd, strict=True)  # the prefixes really are there
    load_weights(fresh, sd)
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------
# 11. torch.export
# --------------------------------------------------------------------------------------


def test_torch_export_matches_eager():
    model, x, expected = _smallest_eval_model()
    exported = torch.export.export(model, (x,))
    out = exported.module()(x)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-5)
    x2 = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x2), model(x2), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------
# 12. torch.hub entry points
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry, filters", [("upanets16", 16), ("upanets64", 64)])
def test_hub_load_local(entry, filters):
    model = torch.hub.load(str(REPO_ROOT), entry, source="local", num_classes=10)
    assert type(model).__name__ == "UPANets"
    assert isinstance(model, U.UPANets)
    assert model.filters == filters
    assert model.num_classes == 10
    assert model.linear.out_features == 10


def test_hub_load_passes_keywords():
    model = torch.hub.load(str(REPO_ROOT), "upanets16", source="local", num_classes=100, img=64)
    assert (model.filters, model.num_classes, model.blocks, model.img) == (16, 100, 1, 64)
    assert model.linear.out_features == 100
