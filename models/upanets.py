"""UPANets: Universal Pixel Attention Networks (Tseng et al., Entropy 2022, arXiv 2103.08640).

A CNN whose blocks carry Channel Pixel Attention (CPA), a per-pixel linear mix
across channels, and whose head, the extreme connection (ExC), pools every stage
with global average pooling plus Spatial Pixel Attention (SPA).

This file imports torch only, so it can be copied into other projects as is (in this
repo, ``models/__init__.py`` registers its builders by name). Parameter names, order and
shapes follow the original implementation, so its state dicts load with ``strict=True``
(see :func:`load_weights`). CPA and SPA
also work as plug-ins after any CNN, and UPANets traces with ``torch.fx`` (for
``create_feature_extractor``), ``torch.compile`` and ``torch.export``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # part of this repo's models package: the builders below join its registry
    from ._registry import register_model
except ImportError:  # copied alone into another project: no registry, the builders work the same

    def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        return builder

__all__ = [
    "CPA",
    "SPA",
    "UPABlock",
    "UPANets",
    "upanets",
    "upanets16",
    "upanets32",
    "upanets64",
    "HEADS",
    "check_config",
    "clean_state_dict",
    "config_repr",
    "config_reprs",
    "describe_state_dict",
    "load_weights",
]

# The block's convolutions widen to `planes * _WIDTH` channels before narrowing back.
_WIDTH = 2

# Classifier heads: the paper's extreme connection (GAP + SPA of the stem and every stage), the same
# connection pooled by GAP alone (the learnable-pooling ablation), and GAP of the last stage only.
HEADS = ("exc", "exc-gap", "last")


def _is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-d tensor is laid out channels_last (and not also contiguous, as (N, C, 1, 1) maps are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# Helpers whose branches depend on a tensor's shape or memory layout are called as
# single nodes when torch.fx traces (e.g. for create_feature_extractor): their code
# then runs on real tensors, so the checks and the layout-aware paths still apply.
torch.fx.wrap("_layer_norm_chw")
torch.fx.wrap("_weighted_pixel_sum")
torch.fx.wrap("_checked_input")


def _layer_norm_chw(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Parameter-free layer norm over (C, H, W), the same as ``F.layer_norm(x, x.shape[1:])``, in x's memory format.

    On channels_last input the same (H, W, C) elements are the trailing dims of
    the NHWC view, so normalising that view avoids ``F.layer_norm``'s copy to
    NCHW and keeps the following layers, and the gradients, in channels_last.
    """
    if _is_channels_last(x):
        nhwc = x.permute(0, 2, 3, 1)
        return F.layer_norm(nhwc, nhwc.shape[1:], eps=eps).permute(0, 3, 1, 2)
    return F.layer_norm(x, x.shape[1:], eps=eps)


class PixelLinear(nn.Linear):
    """A ``nn.Linear`` over channels applied at every pixel of an (N, C, H, W) map.

    Keeps ``nn.Linear``'s (out, in) weight, so state dicts stay those of the
    original, but computes as a 1x1 convolution over a view of that weight: no
    permute/reshape copies, and it runs on the fast conv kernels under autocast
    and channels_last.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class CPA(nn.Module):
    """Channel Pixel Attention, usable after any CNN.

    ``forward(x, sc_x)`` mixes ``x`` across channels at every pixel (linear +
    BatchNorm, (N, in_dim, H, W) -> (N, dim, H, W)) and layer-normalises over
    (C, H, W). With ``sc_x=True`` (the flag) the second input ``sc_x``, e.g. the
    output of a CNN applied to ``x``, is added first when it has the mix's shape;
    otherwise it replaces ``x`` as the input of the shortcut projection below.

    * ``stride=1``: that alone;
    * ``same=True``: plus a second channel-mix projection of ``x`` as shortcut
      (only with ``sc_x=True``), at full resolution even when ``stride=2``;
    * ``stride=2``: plus that projection, then 2x2 average pooling;
    * ``sc_x=False``: a channel embedding that ignores the second input.
    """

    def __init__(self, in_dim: int, dim: int, stride: int = 1, same: bool = False, sc_x: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"CPA stride must be 1 or 2, got {stride}")
        self.stride, self.same, self.sc_x = stride, same, sc_x
        self.cp_ffc = PixelLinear(in_dim, dim)
        self.bn = nn.BatchNorm2d(dim)
        self.has_shortcut = (stride == 2 or same) and sc_x
        if self.has_shortcut:
            self.cp_ffc_sc = PixelLinear(in_dim, dim)
            self.bn_sc = nn.BatchNorm2d(dim)
        self.downsample = stride == 2 and not same

    def forward(self, x: torch.Tensor, sc_x: torch.Tensor, *, residual: bool = False) -> torch.Tensor:
        """CPA of ``x`` with second input ``sc_x``.

        ``residual=True`` promises that ``sc_x`` has the output's (N, dim, H, W)
        shape, as a block's features do, and skips comparing shapes: UPANets
        takes that path, so it traces without shape-dependent branches.
        """
        out = self.bn(self.cp_ffc(x))
        shortcut = x
        if self.sc_x:
            if residual or out.shape == sc_x.shape:
                out = sc_x + out
            else:
                shortcut = sc_x
        out = _layer_norm_chw(out)
        if self.has_shortcut:
            out = out + self.bn_sc(self.cp_ffc_sc(shortcut))
        if self.downsample:
            out = F.avg_pool2d(out, 2)
        return out


class UPABlock(nn.Module):
    """UPA block: (3x3 conv, BN, ReLU) x2 followed by CPA.

    With ``cat=True`` the block's output is concatenated to its input (the
    dense connection inside a stage), so a stage grows by ``planes`` channels
    per block.
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, cat: bool = False, same: bool = False
    ) -> None:
        super().__init__()
        self.cat = cat
        hidden = planes * _WIDTH
        self.cnn = nn.Sequential(
            nn.Conv2d(in_planes, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, planes, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
        )
        self.att = CPA(in_planes, planes, stride, same=same)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.att(x, self.cnn(x), residual=True)
        return torch.cat([x, out], dim=1) if self.cat else out


def _weighted_pixel_sum(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``sum_p x[n, c, p] * weight[p] + bias`` over the H*W pixels p, as an (N, C, 1, 1) map.

    The sum runs over a view in x's own layout, so autograd returns x's gradient
    in that layout too (a 4-d ``x * weight`` would give NCHW).
    """
    weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    if _is_channels_last(x):
        pooled = (x.permute(0, 2, 3, 1).flatten(1, 2) * weight[:, None]).sum(1)
    else:
        pooled = (x.flatten(2) * weight).sum(2)
    return (pooled + bias)[:, :, None, None]


class SPA(nn.Module):
    """Spatial Pixel Attention: one linear map over the flattened H*W pixels of each channel.

    Maps (N, C, img, img) to (N, C, out, out).
    """

    def __init__(self, img: int, out: int = 1) -> None:
        super().__init__()
        self.img, self.out = img, out
        self.sp_ffc = nn.Sequential(nn.Linear(img * img, out * out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out == 1:
            return self.pool(x)
        return self.sp_ffc(x.flatten(2)).unflatten(2, (self.out, self.out))

    def pool(self, x: torch.Tensor, extra_weight: float = 0.0) -> torch.Tensor:
        """SPA (``out=1`` only) with ``extra_weight`` added to every pixel weight.

        ``extra_weight = 1 / (H * W)`` folds global average pooling into the
        same reduction, which is how the ExC head computes GAP + SPA in one pass.
        """
        if self.out != 1:
            raise ValueError(f"SPA.pool reduces to one value per channel; this SPA has out={self.out}")
        linear = self.sp_ffc[0]
        return _weighted_pixel_sum(x, linear.weight.view(-1) + extra_weight, linear.bias)


class UPANets(nn.Module):
    """UPANets with ``filters`` base channels for square ``img`` x ``img`` RGB inputs.

    Arguments follow the original builder ``UPANets(f, c, block, img)``: each of the
    four stages holds one transition block plus ``4 * blocks`` densely
    concatenated UPA blocks and doubles its channels; the ExC head pools the
    stem and every stage (GAP + SPA, layer-normed), concatenates them
    (``31 * filters`` features), then applies BatchNorm1d and a linear classifier.

    ``head`` picks the classifier head (see ``HEADS``): ``"exc"``, the paper's and the
    original code's; ``"exc-gap"``, the same connection pooled by GAP alone (no SPA
    parameters); ``"last"``, GAP of the last stage only (``16 * filters`` features),
    as in a conventional CNN. The ablations keep the layer norm and BatchNorm1d, so
    each differs from the one before it in one factor.
    """

    def __init__(self, filters: int, num_classes: int = 100, blocks: int = 1, img: int = 32, *,
                 head: str = "exc") -> None:
        super().__init__()
        check_config(filters, num_classes, blocks, img, head)
        self.filters, self.num_classes, self.blocks, self.img = filters, num_classes, blocks, img
        self.head = head

        self.root = nn.Sequential(
            nn.Conv2d(3, filters * _WIDTH, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(filters * _WIDTH),
            nn.ReLU(inplace=True),
            nn.Conv2d(filters * _WIDTH, filters, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(filters),
            nn.ReLU(inplace=True),
        )
        self.emb = CPA(3, filters, same=True)
        # Each stage ends with twice the channels it starts with, which is the next stage's width.
        self.layer1 = self._make_stage(filters, blocks, stride=1)
        self.layer2 = self._make_stage(filters * 2, blocks, stride=2)
        self.layer3 = self._make_stage(filters * 4, blocks, stride=2)
        self.layer4 = self._make_stage(filters * 8, blocks, stride=2)
        if head == "exc":
            # Average pooling floors odd sizes, as img // 2 // 2 == img // 4 does.
            self.spa0 = SPA(img)
            self.spa1 = SPA(img)
            self.spa2 = SPA(img // 2)
            self.spa3 = SPA(img // 4)
            self.spa4 = SPA(img // 8)
        # The stem and the stages give 1 + 2 + 4 + 8 + 16 = 31 times `filters` channels; the last stage 16.
        self.num_features = filters * (16 if head == "last" else 31)
        self.linear = nn.Linear(self.num_features, num_classes)
        self.bn = nn.BatchNorm1d(self.num_features)

    @staticmethod
    def _make_stage(planes: int, blocks: int, stride: int) -> nn.Sequential:
        """A first block at ``planes`` channels, then ``4 * blocks`` dense blocks that double them."""
        growth_blocks = 4 * blocks
        growth = planes // growth_blocks
        if stride == 1:
            layers = [UPABlock(planes, planes, same=True)]
        else:
            layers = [UPABlock(planes, planes, stride=stride)]
        for i in range(growth_blocks):
            layers.append(UPABlock(planes + i * growth, growth, cat=True))
        return nn.Sequential(*layers)

    @property
    def spas(self) -> tuple[SPA, ...]:
        """The ExC head's SPA layers, one per feature map: the stem's, then stages 1 to 4; none for other heads."""
        if self.head != "exc":
            return ()
        return (self.spa0, self.spa1, self.spa2, self.spa3, self.spa4)

    @property
    def config(self) -> dict[str, int | str]:
        """The arguments that rebuild this model: ``UPANets(**model.config)``."""
        return {"filters": self.filters, "num_classes": self.num_classes, "blocks": self.blocks, "img": self.img,
                "head": self.head}

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem's and the four stages' feature maps, in that order."""
        x = _checked_input(x, self.img)
        out0 = self.emb(x, self.root(x), residual=True)
        out1 = self.layer1(out0)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        return [out0, out1, out2, out3, out4]

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Pool the feature maps as ``head`` says, layer-norm each, concatenate deepest first, BatchNorm1d, linear."""
        if self.head == "exc":
            # Each map is spa.img pixels square (its pixel weights would not fit otherwise),
            # so GAP's weight is a constant rather than a read of the traced shape.
            pooled = [spa.pool(feature, extra_weight=1.0 / (spa.img * spa.img))
                      for spa, feature in zip(self.spas, features)]
        else:
            pooled = [feature.mean((2, 3), keepdim=True)
                      for feature in (features[-1:] if self.head == "last" else features)]
        out = torch.cat([_layer_norm_chw(p) for p in pooled[::-1]], dim=1).flatten(1)
        return self.linear(self.bn(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def check_config(filters: int, num_classes: int, blocks: int, img: int, head: str = "exc") -> None:
    """Raise ValueError, naming the value and the rule, if ``UPANets(filters, num_classes, blocks, img, head=head)``
    is invalid."""
    if head not in HEADS:
        raise ValueError(f"UPANets head must be one of {', '.join(HEADS)}, got {head!r}")
    for name, value in (("filters", filters), ("num_classes", num_classes), ("blocks", blocks), ("img", img)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"UPANets {name} must be an int, got {value!r}")
    if blocks < 1:
        raise ValueError(f"UPANets blocks must be >= 1, got {blocks}")
    if filters < 1 or filters % (4 * blocks):
        raise ValueError(
            f"UPANets filters must be a positive multiple of 4*blocks = {4 * blocks}, got filters={filters}"
        )
    if num_classes < 1:
        raise ValueError(f"UPANets num_classes must be >= 1, got {num_classes}")
    if img < 8:
        raise ValueError(f"UPANets img must be >= 8 (the last stage is img // 8 pixels wide), got {img}")


def _checked_input(x: torch.Tensor, img: int) -> torch.Tensor:
    """``x`` itself if it is an (N, 3, img, img) batch, else a ValueError.

    Returning ``x`` for the forward pass to use keeps this check in traced
    graphs, whose dead-code elimination would drop a call with an unused result.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"UPANets expects an (N, 3, H, W) batch, got shape {tuple(x.shape)}")
    if x.shape[2] != img or x.shape[3] != img:
        raise ValueError(
            f"UPANets was built for {img}x{img} inputs (its SPA layers are sized by img), "
            f"got {x.shape[2]}x{x.shape[3]}; build it with img={x.shape[2]} or resize the input"
        )
    return x


@register_model
def upanets(num_classes: int = 10, img: int = 32, filters: int = 16, blocks: int = 1, head: str = "exc") -> UPANets:
    """UPANets with ``filters`` base filters (16, 32, 64: the paper's UPANets16/32/64)."""
    return UPANets(filters, num_classes, blocks, img, head=head)


@register_model
def upanets16(num_classes: int = 10, img: int = 32, blocks: int = 1, head: str = "exc") -> UPANets:
    """UPANets with 16 base filters (the paper's UPANets16)."""
    return UPANets(16, num_classes, blocks, img, head=head)


@register_model
def upanets32(num_classes: int = 10, img: int = 32, blocks: int = 1, head: str = "exc") -> UPANets:
    """UPANets with 32 base filters (the paper's UPANets32)."""
    return UPANets(32, num_classes, blocks, img, head=head)


@register_model
def upanets64(num_classes: int = 10, img: int = 32, blocks: int = 1, head: str = "exc") -> UPANets:
    """UPANets with 64 base filters (the paper's UPANets64)."""
    return UPANets(64, num_classes, blocks, img, head=head)


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) key prefixes."""
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def describe_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int | str]:
    """The ``UPANets`` arguments (filters, num_classes, blocks, img, head) a state dict was saved from.

    Only the ExC head has weights sized by the image, so ``img`` is left out for the other heads.
    """
    try:
        stage1_blocks = {key.split(".")[1] for key in state_dict if key.startswith("layer1.")}
        filters = state_dict["root.4.weight"].shape[0]
        num_classes, features = state_dict["linear.weight"].shape
        config = {"filters": filters, "num_classes": num_classes, "blocks": (len(stage1_blocks) - 1) // 4}
        if "spa0.sp_ffc.0.weight" in state_dict:
            return {**config, "img": math.isqrt(state_dict["spa0.sp_ffc.0.weight"].shape[1]), "head": "exc"}
    except (KeyError, IndexError, AttributeError, ValueError) as e:
        raise ValueError(f"not a UPANets state dict (no {e})") from None
    heads = {31 * filters: "exc-gap", 16 * filters: "last"}
    if features not in heads:
        raise ValueError(f"not a UPANets state dict ({features} classifier inputs for {filters} filters)")
    return {**config, "head": heads[features]}


def config_repr(config: Mapping[str, Any]) -> str:
    """``UPANets(filters=16, ...)`` for a :attr:`UPANets.config` or a :func:`describe_state_dict`; the default
    head goes unsaid."""
    arguments = ", ".join(f"{key}={value!r}" for key, value in config.items() if (key, value) != ("head", "exc"))
    return f"UPANets({arguments})"


def config_reprs(found: Mapping[str, Any], expected: Mapping[str, Any]) -> tuple[str, str]:
    """Two configurations (weights' and model's) as ``UPANets(...)`` over the same arguments, for a message that
    shows how they differ: ``img`` where the weights fix it, ``head`` where the two differ."""
    keys = [key for key in expected if key in found and (key != "head" or found[key] != expected[key])]
    return tuple(f"UPANets({', '.join(f'{key}={config[key]!r}' for key in keys)})" for config in (found, expected))


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> nn.Module:
    """Load a state dict into ``model``, with DataParallel's ``module.`` and torch.compile's ``_orig_mod.``
    prefixes removed. A checkpoint file holds it under a key: ``torch.load(path, weights_only=True)["model"]``
    for this repo's checkpoints (``["model_ema"]`` for their moving average), ``["net"]`` for the original
    code's. Weights of another configuration (size, classes or head) raise a RuntimeError that names the
    configuration they hold.
    """
    state_dict = clean_state_dict(state_dict)
    try:
        model.load_state_dict(state_dict, strict=strict)
    except RuntimeError as e:
        try:
            found = describe_state_dict(state_dict)
        except ValueError:
            raise e from None
        if not isinstance(model, UPANets) or all(model.config[key] == value for key, value in found.items()):
            raise
        weights, built = config_reprs(found, model.config)
        raise RuntimeError(f"the weights are those of {weights}, but the model is {built}; build it with the "
                           "weights' arguments") from None
    return model
