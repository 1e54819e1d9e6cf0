"""Scores of a classifier and their reports, torch-free: accuracy, macro/weighted F1, per-class
precision/recall/F1/support, the confusion matrix, the majority-class baseline,
``classification_report.txt`` (sklearn's layout) and ``plots/confusion_matrix.png`` (Pillow).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expkit.files import atomic_file

#: Fonts with CJK glyphs, tried in order for the confusion matrix (a Chinese label set); else
#: Pillow's own font.
_CJK_FONTS = ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
              "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", "/System/Library/Fonts/PingFang.ttc")


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> list[list[int]]:
    """m[i][j] = examples of true class i predicted as j."""
    m = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(y_true, y_pred):
        m[t][p] += 1
    return m


def scores(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """acc, macro_f1, weighted_f1 and per_class {label: precision, recall, f1, support}.

    A class never predicted has precision 0, one without examples recall 0 (sklearn's
    zero_division=0). Macro F1 averages over every label of the set, present in y_true or not.
    """
    K = len(labels)
    m = confusion(y_true, y_pred, K)
    n = len(y_true)
    per_class: dict[str, dict[str, float | int]] = {}
    for k, label in enumerate(labels):
        tp = m[k][k]
        predicted = sum(m[i][k] for i in range(K))
        support = sum(m[k])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    acc = sum(m[k][k] for k in range(K)) / n if n else 0.0
    macro = sum(c["f1"] for c in per_class.values()) / K if K else 0.0
    weighted = sum(c["f1"] * c["support"] for c in per_class.values()) / n if n else 0.0
    return {"acc": acc, "macro_f1": macro, "weighted_f1": weighted, "per_class": per_class, "confusion": m}


def majority_baseline(train_labels: Sequence[int], y_true: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Always predict the most frequent training label (ties: the lower id) and score that on
    ``y_true``: what a classifier must beat."""
    counts = Counter(train_labels)
    majority = min(counts, key=lambda c: (-counts[c], c))
    s = scores(y_true, [majority] * len(y_true), labels)
    return {"label": labels[majority], "acc": s["acc"], "macro_f1": s["macro_f1"], "weighted_f1": s["weighted_f1"]}


def report_text(s: dict[str, Any], labels: Sequence[str], digits: int = 4) -> str:
    """sklearn's classification_report layout: per class, then accuracy, macro and weighted avg."""
    width = max([len(label) for label in labels] + [len("weighted avg")])
    head = f"{'':>{width}} {'precision':>10} {'recall':>10} {'f1-score':>10} {'support':>10}\n\n"
    lines = [head]
    for label in labels:
        c = s["per_class"][label]
        lines.append(f"{label:>{width}} {c['precision']:>10.{digits}f} {c['recall']:>10.{digits}f} "
                     f"{c['f1']:>10.{digits}f} {c['support']:>10}\n")
    n = sum(c["support"] for c in s["per_class"].values())
    K = len(labels)
    macro_p = sum(s["per_class"][lab]["precision"] for lab in labels) / K
    macro_r = sum(s["per_class"][lab]["recall"] for lab in labels) / K
    w_p = sum(s["per_class"][lab]["precision"] * s["per_class"][lab]["support"] for lab in labels) / max(1, n)
    w_r = sum(s["per_class"][lab]["recall"] * s["per_class"][lab]["support"] for lab in labels) / max(1, n)
    lines.append("\n")
    lines.append(f"{'accuracy':>{width}} {'':>10} {'':>10} {s['acc']:>10.{digits}f} {n:>10}\n")
    lines.append(f"{'macro avg':>{width}} {macro_p:>10.{digits}f} {macro_r:>10.{digits}f} "
                 f"{s['macro_f1']:>10.{digits}f} {n:>10}\n")
    lines.append(f"{'weighted avg':>{width}} {w_p:>10.{digits}f} {w_r:>10.{digits}f} "
                 f"{s['weighted_f1']:>10.{digits}f} {n:>10}\n")
    return "".join(lines)


def _font(size: int, text: str) -> Any:
    from PIL import ImageFont

    if any(ord(ch) > 0x2E80 for ch in text):
        for path in _CJK_FONTS:
            if Path(path).is_file():
                try:
                    return ImageFont.truetype(path, size)
                except OSError:
                    continue
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _blend(frac: float) -> tuple[int, int, int]:
    """White (0) to dark blue (1)."""
    lo, hi = (255, 255, 255), (8, 48, 107)
    return tuple(round(a + (b - a) * frac) for a, b in zip(lo, hi))  # type: ignore[return-value]


def plot_confusion(matrix: list[list[int]], labels: Sequence[str], path: str | Path, title: str = "") -> None:
    """Two heat maps side by side: counts, and each row divided by its total (recall on the
    diagonal). Rows are the true class, columns the predicted one. Written atomically."""
    from PIL import Image, ImageDraw

    K = len(labels)
    cell = max(22, min(48, 560 // max(1, K)))
    shown = [label if len(label) <= 16 else label[:15] + "…" for label in labels]
    font = _font(max(9, min(14, cell // 3)), "".join(shown))
    label_font = _font(13, "".join(shown) + title)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(probe.textlength(s, font=label_font)) for s in shown) + 12
    grid = cell * K
    pad, top = 24, 64
    panel_w = label_w + grid + pad
    width, height = 2 * panel_w + pad, top + grid + label_w + 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((pad, 8), title, fill="#222222", font=label_font)
    rows = [sum(r) for r in matrix]
    peak = max(1, max(max(r) for r in matrix))
    for p, (name, normalised) in enumerate((("counts", False), ("row-normalised (recall on the diagonal)", True))):
        x0, y0 = pad + p * panel_w + label_w, top
        draw.text((x0, top - 22), name, fill="#222222", font=label_font)
        for i in range(K):
            for j in range(K):
                v = matrix[i][j]
                frac = v / rows[i] if normalised and rows[i] else (v / peak if not normalised else 0.0)
                box = (x0 + j * cell, y0 + i * cell, x0 + (j + 1) * cell - 1, y0 + (i + 1) * cell - 1)
                draw.rectangle(box, fill=_blend(frac), outline="#dddddd")
                text = f"{frac:.2f}" if normalised else str(v)
                colour = "white" if frac > 0.5 else "#222222"
                tw = probe.textlength(text, font=font)
                draw.text((box[0] + (cell - tw) / 2, box[1] + cell / 2 - 6), text, fill=colour, font=font)
        for i, s in enumerate(shown):  # true labels on the left
            tw = probe.textlength(s, font=label_font)
            draw.text((x0 - tw - 6, y0 + i * cell + cell / 2 - 7), s, fill="#222222", font=label_font)
        for j, s in enumerate(shown):  # predicted labels below, written downwards
            tw = int(probe.textlength(s, font=label_font)) + 4
            tile = Image.new("RGBA", (tw, 18), (255, 255, 255, 0))
            ImageDraw.Draw(tile).text((0, 1), s, fill="#222222", font=label_font)
            tile = tile.rotate(90, expand=True)
            img.paste(tile, (int(x0 + j * cell + cell / 2 - 9), y0 + grid + 6), tile)
        draw.text((x0, y0 + grid + label_w + 14), "columns: predicted, rows: true", fill="#666666", font=label_font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fh:
        img.save(fh, format="PNG")
