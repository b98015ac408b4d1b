#!/usr/bin/env python3
"""Report for scripts/multi30k-experiment.sh: test BLEU of both systems (rdrop bleu, cross-checked with
sacreBLEU), the paired bootstrap result, and training curves (loss, CE, KL, valid BLEU) as SVG.
Writes <out>/report.md, <out>/curves.md (the curves as a table), <out>/curves-*.svg. No plotting library needed."""
import argparse
import json
import os
import re

import sacrebleu


def records(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    return out


def svg_plot(path, title, series, ylabel):
    """series: {name: [(x, y), ...]} -> a small SVG line chart."""
    W, H, L, R, T, B = 640, 360, 60, 20, 30, 40
    pts = [p for s in series.values() for p in s if p[1] is not None]
    if not pts:
        return False
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    sx = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)
    sy = lambda y: H - B - (y - y0) / (y1 - y0) * (H - T - B)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{W/2}" y="18" text-anchor="middle" font-size="14">{title}</text>',
             f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
             f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
             f'<text x="{W/2}" y="{H-8}" text-anchor="middle">update</text>',
             f'<text x="14" y="{H/2}" transform="rotate(-90 14 {H/2})" text-anchor="middle">{ylabel}</text>']
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        xv = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{L-4}" y="{sy(yv)+4:.1f}" text-anchor="end">{yv:.3g}</text>')
        parts.append(f'<text x="{sx(xv):.1f}" y="{H-B+14}" text-anchor="middle">{xv:.0f}</text>')
    for k, (name, s) in enumerate(series.items()):
        s = [p for p in s if p[1] is not None]
        if not s:
            continue
        c = colors[k % len(colors)]
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{d}"/>')
        if len(s) < 30:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{c}"/>' for x, y in s]
        parts.append(f'<text x="{W-R-150}" y="{T+16+16*k}" fill="{c}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ref", required=True)
    a = ap.parse_args()
    refs = open(a.ref, encoding="utf-8").read().splitlines()
    rows, curves = [], {}
    for name in ["baseline", "rdrop"]:
        hyp_path = os.path.join(a.out, f"{name}.test_2016_flickr.en")
        hyps = open(hyp_path, encoding="utf-8").read().splitlines()
        sb = sacrebleu.corpus_bleu(hyps, [refs])
        txt = open(os.path.join(a.out, f"{name}.bleu.txt"), encoding="utf-8").read()
        m = re.search(r"BLEU[^=]*=\s*([0-9.]+)", txt) or re.search(r'"score":\s*([0-9.]+)', txt)
        ours = float(m.group(1)) if m else float("nan")
        recs = records(os.path.join(a.out, name, "metrics.jsonl"))
        train = [r for r in recs if r.get("kind") == "train"]
        valid = [r for r in recs if r.get("kind") == "valid"]
        best = max((r["bleu"] for r in valid if r.get("bleu") is not None), default=None)
        rows.append((name, ours, sb.score, best, train[-1]["update"] if train else 0,
                     train[-1]["ce"] if train else None))
        curves[name] = dict(
            ce=[(r["update"], r["ce"]) for r in train],
            loss=[(r["update"], r["loss"]) for r in train],
            kl=[(r["update"], r.get("kl")) for r in train],
            vbleu=[(r["update"], r.get("bleu")) for r in valid],
            vloss=[(r["update"], r.get("loss")) for r in valid],
        )
    svg_plot(os.path.join(a.out, "curves-train-ce.svg"), "training CE per token (per copy)",
             {n: c["ce"] for n, c in curves.items()}, "CE")
    svg_plot(os.path.join(a.out, "curves-train-loss.svg"), "training loss per token",
             {n: c["loss"] for n, c in curves.items()}, "loss")
    svg_plot(os.path.join(a.out, "curves-kl.svg"), "R-Drop symmetric KL per token",
             {"rdrop": curves["rdrop"]["kl"]}, "KL")
    svg_plot(os.path.join(a.out, "curves-valid-bleu.svg"), "validation BLEU (val, greedy)",
             {n: c["vbleu"] for n, c in curves.items()}, "BLEU")
    svg_plot(os.path.join(a.out, "curves-valid-loss.svg"), "validation label-smoothed CE",
             {n: c["vloss"] for n, c in curves.items()}, "loss")
    # The same curves as a table (train records as logged, validations where they happened).
    updates = sorted({u for c in curves.values() for key in ("ce", "vbleu") for u, _ in c[key]})
    def at(name, key, u):
        for x, y in curves[name][key]:
            if x == u and y is not None:
                return f"{y:.3f}" if key != "vbleu" else f"{y:.2f}"
        return ""
    curve_lines = ["| update | baseline CE | baseline valid loss | baseline valid BLEU | R-Drop CE (per copy) "
                   "| R-Drop KL | R-Drop valid loss | R-Drop valid BLEU |", "|---|---|---|---|---|---|---|---|"]
    for u in updates:
        curve_lines.append(f"| {u} | {at('baseline', 'ce', u)} | {at('baseline', 'vloss', u)} | "
                           f"{at('baseline', 'vbleu', u)} | {at('rdrop', 'ce', u)} | {at('rdrop', 'kl', u)} | "
                           f"{at('rdrop', 'vloss', u)} | {at('rdrop', 'vbleu', u)} |")
    with open(os.path.join(a.out, "curves.md"), "w") as f:
        f.write("\n".join(curve_lines) + "\n")
    paired = open(os.path.join(a.out, "paired-bootstrap.txt"), encoding="utf-8").read().strip()
    lines = ["| system | test_2016_flickr BLEU (rdrop bleu) | sacreBLEU 2.6.0 | best valid BLEU | updates | last train CE |",
             "|---|---|---|---|---|---|"]
    for name, ours, sbs, best, upd, ce in rows:
        lines.append(f"| {name} | {ours:.2f} | {sbs:.2f} | {'' if best is None else f'{best:.2f}'} | {upd} | "
                     f"{'' if ce is None else f'{ce:.3f}'} |")
    md = "\n".join(lines) + "\n\nPaired bootstrap (rdrop bleu --paired-bs, 1000 resamples):\n\n```\n" + paired + "\n```\n"
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
