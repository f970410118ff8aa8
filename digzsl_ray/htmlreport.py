"""Helpers of every method's ``OUT/report.html``: one self-contained page, images embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

THUMB_PX = 96  # display size of one generated image in the grids, whatever the model's resolution


def fig_png(fig) -> str:
    """A matplotlib figure as base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def img_tag(b64: str, alt: str, width: str = "100%") -> str:
    return f'<img alt="{html.escape(alt)}" style="max-width:{width}" src="data:image/png;base64,{b64}">'


def thumb(png: bytes, px: int):
    """One image at ``px`` x ``px``: small images are enlarged with visible pixels (nearest), large
    ones reduced smoothly, so a 512-px model's grid weighs what a 32-px one's does."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    method = Image.Resampling.NEAREST if max(im.size) <= px else Image.Resampling.LANCZOS
    return im.resize((px, px), method)


def grid_b64(pngs: list[bytes], cols: int, px: int = THUMB_PX) -> str:
    """A contact sheet of ``pngs``, ``cols`` per row, as base64 PNG ("" for no images)."""
    from PIL import Image

    ims = [thumb(p, px) for p in pngs]
    if not ims:
        return ""
    rows = (len(ims) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (px + 4), rows * (px + 4)), (255, 255, 255))
    for i, im in enumerate(ims):
        sheet.paste(im, ((i % cols) * (px + 4), (i // cols) * (px + 4)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def read_json_or_empty(path: Path) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def page(title: str, parts: list[str]) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:24px;max-width:1400px} td{vertical-align:top;padding:4px}"
            "pre{background:#f4f4f4;padding:8px} .ok{color:#080} .no{color:#a00}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
