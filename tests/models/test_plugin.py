"""CPA and SPA as plug-ins, the README's plug-in example, and UPANets as a traced backbone.

tests/fixtures/modules_cpa_spa.pt holds eleven cases produced with the original authors'
CPA and SPA modules used on their own: constructor arguments, a state dict, inputs,
and the outputs in train and in eval mode.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import FIXTURES, REPO_ROOT

README = REPO_ROOT / "README.md"


from models.upanets import CPA, SPA, UPANets  # noqa: E402

MODULES_FILE = FIXTURES / "modules_cpa_spa.pt"
FORWARD_FILE = FIXTURES / "forward_filters8_classes10_img32.pt"

CASES: dict = torch.load(MODULES_FILE, map_location="cpu", weights_only=True)
CPA_CASES = sorted(name for name, case in CASES.items() if case["module"] == "CPA")
MODULES = {"CPA": CPA, "SPA": SPA}
FEATURE_NODES = {"emb": "c0", "layer1": "c1", "layer2": "c2", "layer3": "c3", "layer4": "c4"}


@pytest.fixture(scope="module", autouse=True)
def _one_intra_op_thread():
    """One intra-op thread: on a shared 2-core machine tiny tensors run far faster so."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _build(case: dict) -> nn.Module:
    return MODULES[case["module"]](*case["args"], **case["kwargs"])


def _randomise_batchnorms(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so a missing BN term shows."""
    gen = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
                bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
                bn.weight.copy_(torch.randn(bn.num_features, generator=gen))
                bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
    return module


def _cpa_by_definition(
    cpa: CPA, x: torch.Tensor, second: torch.Tensor, stride: int, same: bool, sc_x: bool
) -> torch.Tensor:
    """Eval-mode CPA written out from its definition, with a Linear over channels on an NHWC view."""

    def mix(linear: nn.Linear, bn: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        t = F.linear(t.permute(0, 2, 3, 1), linear.weight, linear.bias).permute(0, 3, 1, 2)
        return F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)

    out = mix(cpa.cp_ffc, cpa.bn, x)
    shortcut = x
    if out.shape == second.shape:
        if sc_x:
            out = second + out
        out = F.layer_norm(out, out.shape[1:])
    else:
        out = F.layer_norm(out, out.shape[1:])
        if sc_x:
            shortcut = second
    if stride == 2 or same:
        if sc_x:
            out = out + mix(cpa.cp_ffc_sc, cpa.bn_sc, shortcut)
        if same:
            return out
        return F.avg_pool2d(out, 2)
    return out


# --------------------------------------------------------------------------------------
# 1. The original's CPA and SPA outputs, after a strict load
# --------------------------------------------------------------------------------------


def test_reference_file_holds_the_eleven_cases():
    assert sorted(CASES) == sorted(
        [
            "cpa_plain_same_shape",
            "cpa_plain_shapes_differ",
            "cpa_same",
            "cpa_stride2",
            "cpa_stride2_shapes_differ",
            "cpa_no_sc_x_embedding",
            "cpa_no_sc_x",
            "cpa_no_sc_x_same_width",
            "cpa_no_sc_x_same",
            "spa_default",
            "spa_out4",
        ]
    )


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_module_matches_original(name, mode):
    case = CASES[name]
    module = _build(case)
    assert list(module.state_dict()) == list(case["state_dict"])
    result = module.load_state_dict(case["state_dict"], strict=True)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    module.train(mode == "train")
    inputs = [t.clone() for t in case["inputs"]]
    with torch.no_grad():
        out = module(*inputs)
    expected = case[f"output_{mode}"]
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    for given, original in zip(inputs, case["inputs"]):
        assert torch.equal(given, original)  # inputs left alone


def test_reference_cases_tell_the_two_shortcut_inputs_apart():
    """In the shapes-differ stride-2 case, projecting x instead of the second input gives another output."""
    case = CASES["cpa_stride2_shapes_differ"]
    x, second = case["inputs"]
    module = _build(case)
    module.load_state_dict(case["state_dict"], strict=True)
    module.eval()
    with torch.no_grad():
        wrong = module(x, x)
    assert (wrong - case["output_eval"]).abs().max() > 1e-3


def test_trained_state_dict_loads_back_into_the_original_layout():
    """Weights saved from our plug-in CPA load into a fresh one strictly, with the original's keys."""
    for name in CPA_CASES:
        case = CASES[name]
        module = _build(case)
        module.load_state_dict(case["state_dict"], strict=True)
        module.train()
        with torch.no_grad():
            module(*case["inputs"])
        saved = module.state_dict()
        assert list(saved) == list(case["state_dict"])
        _build(case).load_state_dict(saved, strict=True)


@pytest.mark.parametrize("name", CPA_CASES)
def test_definition_helper_matches_original(name):
    """The written-out definition used below agrees with the original's eval outputs."""
    case = CASES[name]
    module = _build(case)
    module.load_state_dict(case["state_dict"], strict=True)
    kwargs = {"stride": 1, "same": False, "sc_x": True, **case["kwargs"]}
    with torch.no_grad():
        expected = _cpa_by_definition(module, *case["inputs"], **kwargs)
    torch.testing.assert_close(expected, case["output_eval"], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------
# 2. CPA modes outside the reference file
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shapes_differ", [False, True])
def test_stride2_with_same_projects_and_does_not_pool(shapes_differ):
    torch.manual_seed(0)
    cpa = _randomise_batchnorms(CPA(8, 12, stride=2, same=True)).eval()
    assert list(cpa.state_dict()) == list(CASES["cpa_same"]["state_dict"])  # has cp_ffc_sc, bn_sc
    x = torch.randn(2, 8, 6, 6)
    second = torch.randn(2, 8 if shapes_differ else 12, 6, 6)
    with torch.no_grad():
        out = cpa(x, second)
    assert out.shape == (2, 12, 6, 6)
    expected = _cpa_by_definition(cpa, x, second, stride=2, same=True, sc_x=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_stride2_without_sc_x_pools_without_projection():
    torch.manual_seed(0)
    cpa = _randomise_batchnorms(CPA(8, 12, stride=2, sc_x=False)).eval()
    assert list(cpa.state_dict()) == list(CASES["cpa_no_sc_x"]["state_dict"])  # no cp_ffc_sc
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        out = cpa(x, torch.randn(2, 12, 6, 6))
        ignored = cpa(x, torch.randn(2, 12, 6, 6))
    assert out.shape == (2, 12, 3, 3)
    torch.testing.assert_close(out, ignored, rtol=0, atol=0)
    expected = _cpa_by_definition(cpa, x, x, stride=2, same=False, sc_x=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, second_channels",
    [
        ({}, 12),
        ({}, 8),
        ({"same": True}, 12),
        ({"stride": 2}, 12),
        ({"stride": 2}, 8),
        ({"stride": 2, "same": True}, 12),
        ({"sc_x": False}, 12),
    ],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_channels_last_input_matches_nchw(kwargs, second_channels, mode):
    torch.manual_seed(0)
    cpa = _randomise_batchnorms(CPA(8, 12, **kwargs)).train(mode == "train")
    cl_cpa = copy.deepcopy(cpa).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 6, 6)
    second = torch.randn(2, second_channels, 6, 6)
    with torch.no_grad():
        out = cpa(x, second)
        out_cl = cl_cpa(*(t.contiguous(memory_format=torch.channels_last) for t in (x, second)))
    torch.testing.assert_close(out_cl, out, rtol=0, atol=1e-5)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)


def test_residual_flag_equals_the_shape_dispatch_when_shapes_match():
    torch.manual_seed(0)
    for kwargs in ({}, {"same": True}, {"stride": 2}, {"sc_x": False}):
        cpa = _randomise_batchnorms(CPA(8, 12, **kwargs)).eval()
        x, features = torch.randn(2, 8, 6, 6), torch.randn(2, 12, 6, 6)
        with torch.no_grad():
            torch.testing.assert_close(cpa(x, features, residual=True), cpa(x, features), rtol=0, atol=0)


def test_cpa_rejects_other_strides():
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        CPA(8, 8, stride=3)


# --------------------------------------------------------------------------------------
# 3. SPA
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("out", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_spa_is_a_linear_map_over_each_channels_pixels(out, channels_last):
    torch.manual_seed(0)
    spa = SPA(5, out=out)
    assert list(spa.state_dict()) == ["sp_ffc.0.weight", "sp_ffc.0.bias"]
    assert spa.sp_ffc[0].weight.shape == (out * out, 25)
    x = torch.randn(2, 4, 5, 5)
    expected = (x.reshape(2, 4, 25) @ spa.sp_ffc[0].weight.T + spa.sp_ffc[0].bias).reshape(2, 4, out, out)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(spa(x), expected, rtol=0, atol=1e-5)


def test_spa_pool_needs_out_1():
    with pytest.raises(ValueError, match="out=2"):
        SPA(4, out=2).pool(torch.randn(1, 3, 4, 4))


# --------------------------------------------------------------------------------------
# 4. The README's plug-in section
# --------------------------------------------------------------------------------------

SECTION_HEADING = "### Using CPA and SPA in your own network"


def _readme_section_blocks() -> list[str]:
    text = README.read_text()
    assert SECTION_HEADING in text
    section = text.split(SECTION_HEADING, 1)[1]
    section = re.split(r"^#{1,3} ", section, maxsplit=1, flags=re.MULTILINE)[0]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


def _run_snippet(code: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def test_readme_section_sits_between_the_model_and_training():
    text = README.read_text()
    assert text.index("## The model") < text.index(SECTION_HEADING) < text.index("## Training")


def test_readme_plug_in_example_runs():
    code = _readme_section_blocks()[0]
    assert "CPA(16, 32, sc_x=False)" in code and "self.cpa(out, out)" in code
    assert "from models.upanets import" in code
    assert _run_snippet(code) == ["(2, 32, 8, 8)", "(2, 32, 2, 2)"]


def test_readme_feature_extractor_example_runs():
    code = _readme_section_blocks()[1]
    assert "create_feature_extractor" in code and "forward_features" in code
    expected = {"c0": (2, 16, 32, 32), "c1": (2, 32, 32, 32), "c2": (2, 64, 16, 16), "c3": (2, 128, 8, 8)}
    expected["c4"] = (2, 256, 4, 4)
    assert _run_snippet(code) == [str(expected)]


# --------------------------------------------------------------------------------------
# 5. UPANets as a backbone: torch.fx and torchvision's feature extractor
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FORWARD_FILE, map_location="cpu", weights_only=True)


def _reference_model(reference: dict, channels_last: bool = False) -> UPANets:
    model = UPANets(8, 10, 1, 32)
    model.load_state_dict(reference["state_dict"], strict=True)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _input(reference: dict, channels_last: bool) -> torch.Tensor:
    x = reference["input"]
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_symbolic_trace_matches_eager(reference, mode, channels_last):
    eager = _reference_model(reference, channels_last).train(mode == "train")
    traced = torch.fx.symbolic_trace(_reference_model(reference, channels_last)).train(mode == "train")
    assert isinstance(traced, torch.fx.GraphModule)
    x = _input(reference, channels_last)
    with torch.no_grad():
        expected = eager(x)
        out = traced(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, reference[f"logits_{mode}"], rtol=0, atol=1e-5)
    # Train mode updated the same BatchNorm statistics.
    traced_buffers = dict(traced.named_buffers())
    for name, buffer in eager.named_buffers():
        torch.testing.assert_close(traced_buffers[name], buffer, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_feature_extractor_matches_eager(reference, mode, channels_last):
    from torchvision.models.feature_extraction import create_feature_extractor

    eager = _reference_model(reference, channels_last).train(mode == "train")
    extractor = create_feature_extractor(
        _reference_model(reference, channels_last), return_nodes={**FEATURE_NODES, "linear": "logits"}
    ).train(mode == "train")
    x = _input(reference, channels_last)
    with torch.no_grad():
        expected = eager.forward_features(x)
        eager.load_state_dict(reference["state_dict"])  # undo the train-mode statistics update
        expected_logits = eager(x)
        out = extractor(x)
    assert list(out) == ["c0", "c1", "c2", "c3", "c4", "logits"]
    shapes = [(4, 8, 32, 32), (4, 16, 32, 32), (4, 32, 16, 16), (4, 64, 8, 8), (4, 128, 4, 4)]
    for i, (feature, shape) in enumerate(zip(expected, shapes)):
        assert out[f"c{i}"].shape == shape
        torch.testing.assert_close(out[f"c{i}"], feature, rtol=0, atol=1e-6)
        # The layout-aware helpers still run inside the traced graph.
        assert out[f"c{i}"].is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out["logits"], expected_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["logits"], reference[f"logits_{mode}"], rtol=0, atol=1e-5)


def test_traced_modules_keep_the_input_checks(reference):
    from torchvision.models.feature_extraction import create_feature_extractor

    traced = torch.fx.symbolic_trace(_reference_model(reference)).eval()
    backbone = create_feature_extractor(_reference_model(reference), return_nodes=FEATURE_NODES).eval()
    for module in (traced, backbone):
        with pytest.raises(ValueError, match="32x32 inputs.*got 64x64"):
            module(torch.randn(1, 3, 64, 64))
        with pytest.raises(ValueError, match=re.escape("(2, 1, 32, 32)")):
            module(torch.randn(2, 1, 32, 32))
