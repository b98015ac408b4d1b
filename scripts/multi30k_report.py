#!/usr/bin/env python3
"""Report for scripts/multi30k-experiment.sh: every system's test_2016/test_2017 flickr scores (rdrop
bleu: cased BLEU, lowercased BLEU, chrF; cross-checked with sacreBLEU; and Moses-tokenised lowercased
BLEU against the official tokenised references, the convention of published Multi30k numbers), best vs
averaged checkpoints, seeds as mean ± std, the α sweep, the paired significance tests, and training
curves as PNG (CE per copy, KL, dropout consistency, validation loss and BLEU, against updates and
against wall time). Writes <state>/report.md and <state>/curves-*.png."""
import argparse
import glob
import json
import os
import re
import statistics
import tomllib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import sacrebleu  # noqa: E402
from sacremoses import MosesPunctNormalizer, MosesTokenizer  # noqa: E402

TESTS = ["test_2016_flickr", "test_2017_flickr"]


def records(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1] if os.path.getsize(path) else []


def score(state, name, ck, test, kind):
    p = os.path.join(state, "scores", f"{name}.{ck}.{test}.{kind}.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        v = json.load(f)
    if isinstance(v, list):
        v = v[0]
    return v["score"]


def tok_lc_bleu(hyps, tok_ref):
    """Lowercased, punctuation-normalised, Moses-tokenised BLEU (tok none) against tok/*.lc.norm.tok."""
    norm, tok = MosesPunctNormalizer(lang="en"), MosesTokenizer(lang="en")
    t = [tok.tokenize(norm.normalize(h.lower()), return_str=True) for h in hyps]
    return sacrebleu.corpus_bleu(t, [lines(tok_ref)], tokenize="none", force=True).score


def run_seed(run):
    """The seed a run trained with, from the resolved recipe its checkpoints carry (None if none yet)."""
    recipes = sorted(glob.glob(os.path.join(run, "checkpoints", "*", "recipe.toml")))
    if not recipes:
        return None
    with open(recipes[-1], "rb") as f:
        return tomllib.load(f).get("seed")


def describe(name, run):
    if name.startswith("sweep-a"):
        return f"R-Drop α {name[7:]} (sweep)"
    base = name.split("-s")[0]
    # The seed comes from the run itself: EXTRA_SET="--set seed=N" trains another seed under the
    # systems' plain names.
    seed = run_seed(run) or (name.split("-s")[1] if "-s" in name else "1")
    label = {"baseline": "baseline (label-smoothed CE)", "rdrop": "R-Drop", "control":
             "compute-matched baseline (2× updates)"}.get(base, base)
    return f"{label}, seed {seed}"


def plot(systems, xkey, path, title):
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    panels = [("train", "ce", "train CE per token (per copy)"),
              ("train", "kl", "train KL (R-Drop, per token)"),
              ("valid", "consistency_kl", "dropout consistency: valid KL of 2 train-mode passes"),
              ("valid", "loss", "valid label-smoothed CE"),
              ("valid", "bleu", "valid BLEU (greedy)"),
              ("train", "lr", "learning rate")]
    # One colour per system in every panel, so the legend of one panel reads for all.
    colours = {name: f"C{i}" for i, name in enumerate(systems)}
    for ax, (kind, key, label) in zip(axes.flat, panels):
        for name, recs in systems.items():
            pts = [(r.get(xkey), r.get(key)) for r in recs if r.get("kind") == kind]
            pts = [(x / (3600 if xkey == "wall_s" else 1), y) for x, y in pts if x is not None and y is not None]
            if pts:
                ax.plot(*zip(*pts), label=name, color=colours[name], marker="." if kind == "valid" else None)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("wall time (h)" if xkey == "wall_s" else "update")
        ax.grid(alpha=0.3)
    axes.flat[4].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--tok", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--avg", default="avg5")
    ap.add_argument("--budget", default="", help="the fixed update budget, if the run had one")
    ap.add_argument("--alpha", default="", help="the α R-Drop was given, if it was not swept")
    a = ap.parse_args()
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(a.state, "runs", "*")))
    out = [f"# Multi30k de→en: baseline vs R-Drop\n", f"Binary built from commit `{a.commit}`.\n"]
    if a.budget:
        out.append(f"Fixed budget, not convergence: the baseline and R-Drop trained {a.budget} updates, the "
                   f"compute-matched control {2 * int(a.budget)} (the baseline continued); none stopped early.\n")
    if a.alpha:
        out.append(f"R-Drop's α = {a.alpha} was given, not swept in this run.\n")

    # Main table: one row per system and checkpoint.
    out.append("| system | checkpoint | updates | best valid BLEU (update) | "
               + " | ".join(f"{t} BLEU | lc BLEU | tok-lc BLEU | chrF" for t in TESTS) + " | train wall |")
    out.append("|---" * (5 + 4 * len(TESTS)) + "|")
    crosscheck, per_system = [], {}
    systems_curves = {}
    for name in names:
        run = os.path.join(a.state, "runs", name)
        recs = records(os.path.join(run, "metrics.jsonl"))
        systems_curves[name] = recs
        valid = [r for r in recs if r.get("kind") == "valid" and r.get("bleu") is not None]
        train = [r for r in recs if r.get("kind") == "train"]
        best = max(valid, key=lambda r: r["bleu"], default=None)
        last_upd = train[-1]["update"] if train else 0
        wall = max((r.get("wall_s") or 0 for r in recs), default=0)
        done = os.path.exists(os.path.join(run, "DONE"))
        for ck in ["best", a.avg]:
            cells = []
            for t in TESTS:
                hyp = os.path.join(a.state, "out", f"{name}.{ck}.{t}.en")
                if not os.path.exists(hyp):
                    cells += ["", "", "", ""]
                    continue
                hyps = lines(hyp)
                ours = score(a.state, name, ck, t, "bleu")
                sb = sacrebleu.corpus_bleu(hyps, [lines(os.path.join(a.data, f"{t}.en"))]).score
                crosscheck.append((name, ck, t, ours, sb))
                tl = tok_lc_bleu(hyps, os.path.join(a.tok, f"{t}.lc.norm.tok.en"))
                vals = [ours, score(a.state, name, ck, t, "lc"), tl, score(a.state, name, ck, t, "chrf")]
                per_system.setdefault((name.split("-s")[0], ck, t), {}).setdefault(name, vals)
                cells += ["" if v is None else f"{v:.2f}" for v in vals]
            if not any(cells) and ck != "best":
                continue
            status = "" if done else " (running)"
            out.append(f"| {describe(name, run)}{status} | {ck} | {last_upd} | "
                       + (f"{best['bleu']:.2f} ({best['update']})" if best else "") + " | "
                       + " | ".join(cells) + f" | {wall / 3600:.2f} h |")
    out.append("\nBLEU: sacreBLEU's default (cased, 13a, detokenised; `rdrop bleu`). lc BLEU: the same, "
               "lowercased (`-lc`). tok-lc BLEU: hypotheses lowercased, punctuation-normalised and "
               "Moses-tokenised (sacremoses), scored with `tokenize=none` against the official "
               "`*.lc.norm.tok.en` references: the convention of published Multi30k numbers. chrF: "
               "sacreBLEU's chrF2. `best` = checkpoint with the best validation BLEU, "
               f"`{a.avg}` = average of the last checkpoints.\n")

    # Seeds: mean ± std where a system has several.
    seeds = [(k, v) for k, v in per_system.items() if len(v) > 1]
    if seeds:
        out.append("| system | checkpoint | test | seeds | BLEU mean ± std | chrF mean ± std |\n|---|---|---|---|---|---|")
        for (base, ck, t), v in sorted(seeds):
            b = [x[0] for x in v.values()]
            c = [x[3] for x in v.values()]
            out.append(f"| {base} | {ck} | {t} | {len(b)} | {statistics.mean(b):.2f} ± {statistics.stdev(b):.2f} | "
                       f"{statistics.mean(c):.2f} ± {statistics.stdev(c):.2f} |")
        out.append("")

    # The sweep.
    sweep = [n for n in names if n.startswith("sweep-a")]
    if sweep:
        chosen = os.path.join(a.state, "scores", "chosen-alpha")
        chosen = open(chosen).read().strip() if os.path.exists(chosen) else "?"
        out.append(f"α sweep (validation BLEU, greedy; chosen α = {chosen}):\n")
        out.append("| α | updates | best valid BLEU | last valid loss | last train CE | last train KL | last dropout-consistency KL |")
        out.append("|---|---|---|---|---|---|---|")
        for n in sorted(sweep, key=lambda n: float(n[7:])):
            recs = systems_curves[n]
            v = [r for r in recs if r.get("kind") == "valid"]
            t = [r for r in recs if r.get("kind") == "train"]
            bb = max((r["bleu"] for r in v if r.get("bleu") is not None), default=None)
            f = lambda x: "" if x is None else f"{x:.3f}"
            out.append(f"| {n[7:]} | {t[-1]['update'] if t else 0} | {f(bb)} | {f(v[-1].get('loss') if v else None)} | "
                       f"{f(t[-1].get('ce') if t else None)} | {f(t[-1].get('kl') if t else None)} | "
                       f"{f(v[-1].get('consistency_kl') if v else None)} |")
        out.append("")

    # Significance: a summary (Δ BLEU of the best checkpoints, p of each test), then sacreBLEU's tables.
    paired = []
    for p in sorted(glob.glob(os.path.join(a.state, "scores", "paired.*.txt"))):
        _, base, other, test = os.path.basename(p)[:-4].split(".")
        paired.append((base, other, test, open(p, encoding="utf-8").read()))
    if paired:
        out.append("| comparison | test | Δ BLEU | p bootstrap | p approximate randomisation |\n|---|---|---|---|---|")
        for base, other, test, text in paired:
            # The bootstrap table comes first, then approximate randomisation's, each with one p.
            ps = ["".join(m) for m in re.findall(r"\(p = ([0-9.]+)\)(\*?)", text)] + ["", ""]
            ours, theirs = score(a.state, other, "best", test, "bleu"), score(a.state, base, "best", test, "bleu")
            delta = "" if ours is None or theirs is None else f"{ours - theirs:+.2f}"
            out.append(f"| {other} vs {base} | {test} | {delta} | {ps[0]} | {ps[1]} |")
        out.append("")
    for base, other, test, text in paired:
        # sacreBLEU's tables only (bootstrap, then approximate randomisation); its help text is left out.
        # `l and`: a blank line's l[:1] is "", which `in` finds in any string.
        tables = "\n".join(l for l in text.splitlines() if l and l[0] in "╒│╞├╘")
        out.append(f"Paired tests, {other} against {base} on {test} (bootstrap 1000 resamples, then "
                   f"approximate randomisation 10000 trials; p marked * below 0.05):\n\n```\n{tables}\n```\n")

    # Cross-check with sacreBLEU.
    if crosscheck:
        worst = max(abs((o or 0) - s) for _, _, _, o, s in crosscheck)
        out.append(f"`rdrop bleu` vs sacreBLEU {sacrebleu.__version__} on all {len(crosscheck)} outputs: "
                   f"largest difference {worst:.4f} BLEU.\n")

    main_sys = {n: r for n, r in systems_curves.items() if not n.startswith("sweep-a")}
    for xkey, tag in [("update", "updates"), ("wall_s", "wall")]:
        for group, sy in [("main", main_sys), ("sweep", {n: r for n, r in systems_curves.items()
                                                         if n.startswith("sweep-a") or n == "baseline"})]:
            if sy:
                path = os.path.join(a.state, f"curves-{group}-{tag}.png")
                plot(sy, xkey, path, f"Multi30k de→en ({group}), against {tag}")
                out.append(f"![{group} curves against {tag}](curves-{group}-{tag}.png)\n")
    with open(os.path.join(a.state, "report.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
