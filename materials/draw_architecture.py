"""Draw the UPANets architecture figure (Tseng et al., Entropy 2022).

The channel counts and spatial sizes in the figure are not typed in by hand:
they are read from an instantiated ``upanets16`` (32x32 CIFAR input) with
forward hooks, so the figure follows ``models/upanets.py``.

Usage, from the repository root::

    python materials/draw_architecture.py [--out materials/upanets_architecture.png]
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Ellipse, FancyArrowPatch, FancyBboxPatch

REPO_ROOT = Path(__file__).resolve().parent.parent

from models.upanets import UPANets, upanets16

DEFAULT_OUT = REPO_ROOT / "materials" / "upanets_architecture.png"
FIG_SIZE = (16, 9)  # inches; at DPI below this is 1600 x 900 px
DPI = 100

# Colours, one per kind of box.
COLORS = {
    "io": "#e8e8e8",
    "stem": "#cfe2f3",
    "stage": "#d9ead3",
    "head": "#fce5cd",
    "conv": "#d9ead3",
    "cpa": "#ead1dc",
    "norm": "#fff2cc",
    "opt": "#ffffff",
}
EDGE = "#333333"
ARROW = "#333333"
SKIP = "#1f5fa8"
OPTIONAL = "#8a8a8a"


# --------------------------------------------------------------------------
# Reading the real shapes from the model
# --------------------------------------------------------------------------


@dataclass
class StageInfo:
    name: str
    in_shape: tuple[int, ...]  # (C, H, W) entering the stage
    transition_out: tuple[int, ...]  # (C, H, W) after the first (transition) block
    out_shape: tuple[int, ...]  # (C, H, W) leaving the stage
    n_dense: int  # dense (concatenating) UPA blocks after the transition
    growth: int  # channels each dense block adds
    stride: int  # 1 or 2, of the transition block
    same: bool  # transition with same=True (stage 1)
    first_dense: tuple[tuple[int, ...], tuple[int, ...]]  # (in, out) of the first dense block


@dataclass
class ModelInfo:
    filters: int
    img: int
    num_classes: int
    params: int
    input_shape: tuple[int, ...]
    root_hidden: int  # channels after the stem's first conv
    stem_out: tuple[int, ...]
    stages: list[StageInfo]
    spa_pixels: list[int]  # H*W each SPA maps to one value: stem, stage 1..4
    head_features: int  # width of the concatenated ExC vector (BatchNorm1d input)
    logits: int


def _chw(shape: torch.Size) -> tuple[int, ...]:
    return tuple(int(s) for s in shape[1:])


def probe_model(model: UPANets) -> ModelInfo:
    """Run one dummy batch through ``model`` and record shapes with forward hooks."""
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def record(name: str):
        def hook(module, inputs, output):
            seen[name] = (_chw(inputs[0].shape), _chw(output.shape))

        return hook

    modules = {"root0": model.root[0], "emb": model.emb, "bn": model.bn, "linear": model.linear}
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    for s, stage in enumerate(stages, start=1):
        for b, block in enumerate(stage):
            modules[f"s{s}b{b}"] = block
    handles = [m.register_forward_hook(record(name)) for name, m in modules.items()]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, model.img, model.img))
    finally:
        for h in handles:
            h.remove()

    stage_infos = []
    for s, stage in enumerate(stages, start=1):
        first = stage[0]
        dense = [seen[f"s{s}b{b}"] for b in range(1, len(stage))]
        growths = {out[0] - inp[0] for inp, out in dense}
        if len(growths) != 1:
            raise RuntimeError(f"stage {s}: unequal growth {growths}")
        stage_infos.append(
            StageInfo(
                name=f"Stage {s}",
                in_shape=seen[f"s{s}b0"][0],
                transition_out=seen[f"s{s}b0"][1],
                out_shape=dense[-1][1] if dense else seen[f"s{s}b0"][1],
                n_dense=len(dense),
                growth=growths.pop(),
                stride=first.att.stride,
                same=first.att.stride == 1 and first.att.has_shortcut,
                first_dense=dense[0],
            )
        )
    return ModelInfo(
        filters=model.filters,
        img=model.img,
        num_classes=model.num_classes,
        params=sum(p.numel() for p in model.parameters()),
        input_shape=seen["emb"][0],
        root_hidden=seen["root0"][1][0],
        stem_out=seen["emb"][1],
        stages=stage_infos,
        spa_pixels=[spa.sp_ffc[0].in_features for spa in model.spas],
        head_features=seen["bn"][0][0],
        logits=seen["linear"][1][0],
    )


# --------------------------------------------------------------------------
# Drawing primitives (axes coordinates: x, y in [0, 1])
# --------------------------------------------------------------------------


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "\u00d7".join(str(s) for s in shape)


def draw_box(ax, x, y, w, h, title, lines=(), color="#ffffff", dashed=False, fontsize=9.5,
             title_size=11):
    """A rounded box at lower-left (x, y) with a bold title and centred text lines below it."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h,
            boxstyle="round,pad=0,rounding_size=0.008",
            facecolor=color,
            edgecolor=OPTIONAL if dashed else EDGE,
            linestyle=(0, (4, 3)) if dashed else "-",
            linewidth=1.2,
            mutation_aspect=FIG_SIZE[0] / FIG_SIZE[1],
        )
    )
    text_color = "#555555" if dashed else "black"
    n = len(lines) + (1 if title else 0)
    # Space lines evenly inside the box.
    step = h / (n + 1)
    ys = [y + h - step * (i + 1) for i in range(n)]
    i = 0
    if title:
        ax.text(x + w / 2, ys[0], title, ha="center", va="center", fontsize=title_size,
                fontweight="bold", color=text_color)
        i = 1
    for line in lines:
        ax.text(x + w / 2, ys[i], line, ha="center", va="center", fontsize=fontsize,
                color=text_color)
        i += 1
    return (x, y, w, h)


def arrow(ax, start, end, color=ARROW, dashed=False, lw=1.4):
    ax.add_patch(
        FancyArrowPatch(
            start, end,
            arrowstyle="-|>", mutation_scale=13, color=color, linewidth=lw,
            linestyle=(0, (4, 3)) if dashed else "-", shrinkA=0, shrinkB=0,
        )
    )


def polyline_arrow(ax, points, color=ARROW, dashed=False, lw=1.4):
    """Straight segments through ``points`` with an arrow head on the last one."""
    xs, ys = zip(*points[:-1])
    ax.plot(xs, ys, color=color, linewidth=lw, linestyle=(0, (4, 3)) if dashed else "-",
            solid_capstyle="butt")
    arrow(ax, points[-2], points[-1], color=color, dashed=dashed, lw=lw)


def op_circle(ax, x, y, symbol, r=0.014):
    """A circled operator (sum), drawn round in pixels despite the 16:9 axes."""
    aspect = FIG_SIZE[0] / FIG_SIZE[1]
    ax.add_patch(
        Ellipse((x, y), 2 * r, 2 * r * aspect, facecolor="white",
                                   edgecolor=EDGE, linewidth=1.3)
    )
    ax.text(x, y, symbol, ha="center", va="center", fontsize=14, fontweight="bold")
    return r, r * aspect


def right(b):
    return (b[0] + b[2], b[1] + b[3] / 2)


def left(b):
    return (b[0], b[1] + b[3] / 2)


def top(b):
    return (b[0] + b[2] / 2, b[1] + b[3])


def bottom(b):
    return (b[0] + b[2] / 2, b[1])


def panel_frame(ax, x, y, w, h, label):
    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h, boxstyle="round,pad=0,rounding_size=0.01", facecolor="none",
            edgecolor="#999999", linewidth=1.0, linestyle=(0, (6, 4)),
            mutation_aspect=FIG_SIZE[0] / FIG_SIZE[1],
        )
    )
    if label:
        ax.text(x + 0.008, y + h - 0.012, label, ha="left", va="top", fontsize=12,
                fontweight="bold", color="#444444")


# --------------------------------------------------------------------------
# The two panels
# --------------------------------------------------------------------------


def stage_lines(stage: StageInfo) -> list[str]:
    if stage.same:
        first = "1 UPA block (same)"
    else:
        first = f"1 UPA block, stride {stage.stride}"
    c_in, c_first = stage.in_shape[0], stage.transition_out[0]
    return [
        first,
        f"{c_in}\u2192{c_first} ch" + ("" if stage.same else ", CPA avg-pool"),
        f"{stage.n_dense} dense UPA (+{stage.growth} ch each)",
        f"out {fmt_shape(stage.out_shape)}",
    ]


def draw_pipeline(ax, info: ModelInfo) -> None:
    """Top panel: input -> stem -> stages, ExC head below them."""
    row_y, row_h = 0.665, 0.18
    gap = 0.018
    widths = [0.062, 0.115] + [0.12] * 4
    xs = [0.015]
    for w in widths[:-1]:
        xs.append(xs[-1] + w + gap)

    boxes = [
        draw_box(ax, xs[0], row_y, widths[0], row_h, "Input",
                 ["image", fmt_shape(info.input_shape)], COLORS["io"]),
        draw_box(ax, xs[1], row_y, widths[1], row_h, "Stem + CPA",
                 [
                     "(conv3\u00d73-BN-ReLU)\u00d72",
                     f"3\u2192{info.root_hidden}\u2192{info.stem_out[0]} ch",
                     "+ emb CPA (same)",
                     f"out {fmt_shape(info.stem_out)}",
                 ], COLORS["stem"]),
    ]
    for x, w, stage in zip(xs[2:], widths[2:], info.stages):
        boxes.append(draw_box(ax, x, row_y, w, row_h, stage.name, stage_lines(stage),
                              COLORS["stage"], fontsize=9))
    for a, b in zip(boxes, boxes[1:]):
        arrow(ax, right(a), left(b))

    draw_head(ax, info, boxes[1:])
    draw_legend(ax, x=right(boxes[-1])[0] + 0.03, y_top=row_y + row_h)


def draw_legend(ax, x, y_top) -> None:
    """Line styles and abbreviations, in the free corner right of Stage 4."""
    step = 0.027
    y = y_top - 0.01
    samples = [
        (ARROW, "-", "data flow"),
        (OPTIONAL, (0, (4, 3)), "first block of a stage only"),
        (SKIP, "-", "dense skip, concatenated"),
    ]
    for color, style, label in samples:
        ax.plot([x, x + 0.03], [y, y], color=color, linestyle=style, linewidth=1.6)
        ax.text(x + 0.038, y, label, ha="left", va="center", fontsize=9.5)
        y -= step
    terms = [
        ("CPA", "channel pixel attention"),
        ("SPA", "spatial pixel attention"),
        ("GAP", "global average pooling"),
        ("p", "channels a block outputs"),
    ]
    for short, long in terms:
        ax.text(x, y, short, ha="left", va="center", fontsize=9.5, fontweight="bold")
        ax.text(x + 0.038, y, long, ha="left", va="center", fontsize=9.5)
        y -= step


def draw_head(ax, info: ModelInfo, feature_boxes) -> None:
    """ExC head: GAP + SPA per feature map, concatenation, BatchNorm1d, Linear."""
    panel_frame(ax, 0.008, 0.405, 0.984, 0.215, None)
    ax.text(0.015 + 0.031, 0.5125, "ExC head\n(extreme\nconnection)", ha="center", va="center",
            fontsize=11, fontweight="bold", color="#444444", linespacing=1.3)
    pool_y, pool_h = 0.50, 0.085
    channels = [info.stem_out[0]] + [s.out_shape[0] for s in info.stages]
    pool_boxes = []
    for fb, c, pixels in zip(feature_boxes, channels, info.spa_pixels):
        x, _, w, _ = fb
        pb = draw_box(ax, x + 0.008, pool_y, w - 0.016, pool_h, "GAP + SPA",
                      [f"SPA: {pixels} px \u2192 1", f"layer norm \u2192 {c}"], COLORS["head"],
                      fontsize=9, title_size=10)
        pool_boxes.append(pb)
        arrow(ax, bottom(fb), top(pb))

    # Concatenation bar under the pooling boxes.
    bar_x0 = pool_boxes[0][0]
    bar_x1 = pool_boxes[-1][0] + pool_boxes[-1][2]
    bar = draw_box(ax, bar_x0, 0.422, bar_x1 - bar_x0, 0.045, None,
                   [f"concat, deepest first: {' + '.join(str(c) for c in channels[::-1])}"
                    f" = {info.head_features} features"],
                   COLORS["norm"], fontsize=10)
    for pb in pool_boxes:
        arrow(ax, bottom(pb), (bottom(pb)[0], bar[1] + bar[3]))

    tail_y, tail_h, tail_w, tail_gap = 0.422 + 0.0225 - 0.04, 0.08, 0.055, 0.018
    specs = [
        ("BN1d", str(info.head_features), COLORS["head"]),
        ("Linear", f"{info.head_features}\u2192{info.logits}", COLORS["head"]),
        ("logits", str(info.logits), COLORS["io"]),
    ]
    prev = bar
    x = bar_x1 + tail_gap
    for title, line, color in specs:
        box = draw_box(ax, x, tail_y, tail_w, tail_h, title, [line], color, title_size=10)
        arrow(ax, right(prev), left(box))
        prev, x = box, x + tail_w + tail_gap


def draw_upa_block(ax, info: ModelInfo) -> None:
    """Bottom panel: one UPA block, with the first-block-only parts dashed."""
    panel_frame(ax, 0.008, 0.015, 0.984, 0.365, "UPA block")
    main_y = 0.185  # centre line of the data path
    bh = 0.075

    def on_main(x, w, *args, **kwargs):
        return draw_box(ax, x, main_y - bh / 2, w, bh, *args, **kwargs)

    x_in = on_main(0.03, 0.06, "x", ["C\u00d7H\u00d7W"], COLORS["io"])

    conv_y = 0.245
    conv1 = draw_box(ax, 0.13, conv_y, 0.093, bh, "conv3\u00d73", ["C\u21922p, BN, ReLU"],
                     COLORS["conv"], title_size=10)
    conv2 = draw_box(ax, 0.238, conv_y, 0.093, bh, "conv3\u00d73", ["2p\u2192p, BN, ReLU"],
                     COLORS["conv"], title_size=10)
    cpa = draw_box(ax, 0.13, 0.085, 0.201, bh, "CPA (channel pixel attention)",
                   ["1\u00d71 channel mix (linear C\u2192p per pixel) + BN"], COLORS["cpa"],
                   fontsize=8.8, title_size=10)

    # Split from x into the two branches.
    split_x = 0.11
    ax.plot([right(x_in)[0], split_x], [main_y, main_y], color=ARROW, lw=1.4)
    polyline_arrow(ax, [(split_x, main_y), (split_x, left(conv1)[1]), left(conv1)])
    polyline_arrow(ax, [(split_x, main_y), (split_x, left(cpa)[1]), left(cpa)])
    arrow(ax, right(conv1), left(conv2))

    sum_x = 0.358
    rx, ry = op_circle(ax, sum_x, main_y, "+")
    polyline_arrow(ax, [right(conv2), (sum_x, right(conv2)[1]), (sum_x, main_y + ry)])
    polyline_arrow(ax, [right(cpa), (sum_x, right(cpa)[1]), (sum_x, main_y - ry)])

    ln = on_main(0.385, 0.08, "layer norm", ["over (C, H, W)"], COLORS["norm"], title_size=10)
    arrow(ax, (sum_x + rx, main_y), left(ln))

    # First-block-only parts: shortcut projection and 2x2 average pooling.
    sc_x = 0.49
    srx, sry = op_circle(ax, sc_x, main_y, "+")
    arrow(ax, right(ln), (sc_x - srx, main_y))
    short = draw_box(ax, 0.13, 0.025, 0.201, 0.05, None,
                     ["shortcut: 1\u00d71 channel mix + BN (first block)"],
                     COLORS["opt"], dashed=True, fontsize=8.8)
    split_low = split_x - 0.008
    polyline_arrow(ax, [(split_low, main_y), (split_low, left(short)[1]), left(short)],
                   color=OPTIONAL, dashed=True)
    polyline_arrow(ax, [right(short), (sc_x, right(short)[1]), (sc_x, main_y - sry)],
                   color=OPTIONAL, dashed=True)
    pool = on_main(0.515, 0.08, "avg-pool 2\u00d72", ["stride-2 first block"], COLORS["opt"],
                   dashed=True, title_size=10, fontsize=9)
    arrow(ax, (sc_x + srx, main_y), left(pool))

    cat = on_main(0.618, 0.075, "concat", ["[x, out]", "dense blocks"], COLORS["norm"],
                  title_size=10, fontsize=9)
    arrow(ax, right(pool), left(cat))
    out = on_main(0.713, 0.062, "out", ["(C+p)\u00d7H\u00d7W"], COLORS["io"], fontsize=9)
    arrow(ax, right(cat), left(out))

    # Dense skip: x is concatenated onto the block output (dense blocks only).
    skip_y = 0.34
    polyline_arrow(ax, [top(x_in), (top(x_in)[0], skip_y), (top(cat)[0], skip_y), top(cat)],
                   color=SKIP)
    ax.text((top(x_in)[0] + top(cat)[0]) / 2, skip_y + 0.008,
            "x is kept: a dense block outputs concat(x, its p new channels)",
            ha="center", va="bottom", fontsize=9, color=SKIP)

    draw_block_notes(ax, info)


def draw_block_notes(ax, info: ModelInfo) -> None:
    growth = ", ".join(str(s.growth) for s in info.stages)
    example = info.stages[1].first_dense
    lines = [
        "Each stage = 1 first block",
        "  + 4\u00b7blocks dense blocks.",
        "",
        "Dense blocks: stride 1, no shortcut;",
        f"grow p = {growth} ch (stages 1\u20134).",
        "",
        "First block: no concat, p = stage width;",
        "adds the dashed shortcut projection.",
        "Stage 1: same=True (stride 1);",
        "stages 2\u20134: stride 2 (CPA avg-pool).",
        "",
        "e.g. Stage 2, first dense block:",
        f"  {fmt_shape(example[0])} \u2192 {fmt_shape(example[1])}",
    ]
    ax.text(0.80, 0.33, "\n".join(lines), ha="left", va="top", fontsize=9.5,
            linespacing=1.35, color="#222222")


# --------------------------------------------------------------------------


def draw_figure(info: ModelInfo, out: Path) -> None:
    plt.rcParams.update({"font.family": "DejaVu Sans"})
    fig = plt.figure(figsize=FIG_SIZE, dpi=DPI, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")

    ax.text(0.5, 0.965,
            f"UPANets{info.filters}: Universal Pixel Attention Networks "
            f"({info.img}\u00d7{info.img} input, {info.num_classes} classes, "
            f"{info.params / 1e6:.2f} M parameters)",
            ha="center", va="center", fontsize=16, fontweight="bold")
    ax.text(0.5, 0.925,
            "shapes are C\u00d7H\u00d7W, read from the instantiated model with forward hooks",
            ha="center", va="center", fontsize=10.5, color="#555555")

    draw_pipeline(ax, info)
    draw_upa_block(ax, info)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor="white", metadata={"Software": None})
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output image (default: {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    model = upanets16(num_classes=10, img=32)
    info = probe_model(model)
    draw_figure(info, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
