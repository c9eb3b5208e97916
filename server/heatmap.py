"""A PNG heatmap of one attention map, both axes labelled with the bytes (multi-byte characters once)."""

from __future__ import annotations

import functools
import io

import numpy as np


def render_png(attention: np.ndarray, labels: list[str], title: str) -> bytes:
    """attention: (T, T) probabilities, queries down, keys across. Labels: one per byte ("" for continuations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = attention.shape[0]
    side = min(40.0, max(5.0, 2.0 + T * 0.13))  # about 9 pixels per byte at 100 dpi, readable at 256 bytes
    font = 8 if T <= 64 else 6 if T <= 160 else 4.5
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    masked = np.ma.masked_where(np.triu(np.ones_like(attention, dtype=bool), 1), attention)
    im = ax.imshow(masked, cmap="viridis", vmin=0.0, vmax=float(attention.max()) or 1.0, interpolation="nearest")
    shown = drawable_labels(labels)
    ax.set_xticks(range(T), shown, fontsize=font, rotation=90)
    ax.set_yticks(range(T), shown, fontsize=font)
    ax.tick_params(length=0)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="attention probability")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def drawable_labels(labels: list[str]) -> list[str]:
    """The labels as the PNG writes them: a space as ␣, and a character the font has no glyph for as its code point
    (U+6771): matplotlib draws with the DejaVu Sans it bundles, which has no CJK, and this server installs no other
    font, so Chinese or Japanese text would be labelled with empty boxes (and a warning logged for each character)."""
    has_glyph = _font().get_char_index
    shown = []
    for label in labels:
        if label == " ":
            label = "␣"
        elif not all(has_glyph(ord(c)) for c in label):
            label = " ".join(f"U+{ord(c):04X}" for c in label)
        shown.append(label)
    return shown


@functools.cache
def _font():
    """The font matplotlib draws the tick labels with (its default family, found once per process)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return FT2Font(font_manager.findfont(font_manager.FontProperties()))
