#!/usr/bin/env python3
"""Small helpers for scripts/gpu-check.sh (standard library only).

  corpus  MODEL_DIR OUT_PREFIX N LEN MIN_FRAC SEED
          Writes OUT_PREFIX.src / .tgt: N sentence pairs of whole-word pieces taken from the model's
          vocab.json, so that each sentence is about its word count + 1 (</s>) tokens long: lengths
          uniform in [ceil(MIN_FRAC*LEN), LEN] tokens, like bench_train_cuda.py's random batches.
  ids     OUT N LEN VOCAB SEED
          Writes N lines of LEN random token ids in [2, VOCAB-2] (for `rdrop translate --token-ids`).
  peak    SAMPLES_FILE
          Prints the peak of an `nvidia-smi --query-gpu=memory.used -lms` log, minus its first sample.
  rdrop-train METRICS_JSONL
          Summarises rdrop's metrics.jsonl: median tokens/s and step time over the windows after the
          first, and the median of each phase's ms per update where the run had --profile-phases.
  ncu-top CSV N
          The N kernels with the most GPU time in an `ncu --csv --metrics gpu__time_duration.sum`
          log: name, launches, total and mean µs, share of the profiled time.
  summary WORK_DIR OUT_JSON
          Collects every *.json fragment the check wrote under WORK_DIR/results into one JSON.
"""
import glob
import json
import math
import os
import random
import statistics
import sys


def corpus(model_dir, prefix, n, length, min_frac, seed):
    n, length, min_frac, seed = int(n), int(length), float(min_frac), int(seed)
    with open(os.path.join(model_dir, "vocab.json")) as f:
        vocab = json.load(f)
    words = sorted(p[1:] for p in vocab if p.startswith("\u2581") and len(p) > 2 and p[1:].isalpha())
    if len(words) < 100:
        raise SystemExit(f"corpus: only {len(words)} whole-word pieces in {model_dir}/vocab.json")
    rng = random.Random(seed)
    lo = max(2, math.ceil(min_frac * length))
    for side in ("src", "tgt"):
        with open(f"{prefix}.{side}", "w") as f:
            for _ in range(n):
                k = rng.randint(lo, length) - 1  # + </s>
                f.write(" ".join(rng.choice(words) for _ in range(k)) + "\n")


def ids(out, n, length, vocab, seed):
    rng = random.Random(int(seed))
    with open(out, "w") as f:
        for _ in range(int(n)):
            f.write(" ".join(str(rng.randint(2, int(vocab) - 2)) for _ in range(int(length))) + "\n")


def peak(path):
    vals = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.isdigit():
                vals.append(int(line))
    if not vals:
        print("null")
        return
    print(max(vals) - vals[0])


def rdrop_train(path):
    recs = []
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("kind") == "train" and r.get("tokens_per_s"):
                recs.append(r)
    if len(recs) < 2:
        print(json.dumps({"error": f"{len(recs)} train records in {path}"}))
        return
    steady = recs[1:]  # the first window holds start-up: kernel loading, allocator growth
    tps, step = [], []
    prev = recs[0]
    for r in steady:
        tok = r["tokens_seen"] - prev["tokens_seen"]
        upd = r.get("updates_in_window") or (r["update"] - prev["update"])
        tps.append(r["tokens_per_s"])
        step.append(tok / upd / r["tokens_per_s"])
        prev = r
    print(json.dumps({
        "windows": len(steady), "updates": recs[-1]["update"],
        "tgt_tokens_per_s": round(statistics.median(tps), 1),
        "median_step_s": round(statistics.median(step), 5),
        "tgt_tokens_per_step": round((recs[-1]["tokens_seen"] - recs[0]["tokens_seen"])
                                     / max(1, recs[-1]["update"] - recs[0]["update"]), 1),
        "first_last_loss": [recs[0].get("loss"), recs[-1].get("loss")],
        "first_last_kl": [recs[0].get("kl"), recs[-1].get("kl")],
        "phase_ms": {k: round(statistics.median(r["phase_ms"][k] for r in steady), 3)
                     for k in steady[0]["phase_ms"]} if "phase_ms" in steady[0] else None,
    }))


def ncu_top(path, n):
    import csv
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu prints its own progress lines too
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "nsecond")
        ns = v * {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(unit, 1)
        rows.append((r["Kernel Name"], ns))
    total = sum(ns for _, ns in rows) or 1
    by = {}
    for name, ns in rows:
        c, t = by.get(name, (0, 0.0))
        by[name] = (c + 1, t + ns)
    top = sorted(by.items(), key=lambda kv: -kv[1][1])[: int(n)]
    print(json.dumps({
        "kernels_profiled": len(rows), "gpu_time_us": round(total / 1e3, 1),
        "top": [{"kernel": k[:120], "launches": c, "total_us": round(t / 1e3, 1),
                 "mean_us": round(t / c / 1e3, 2), "share": round(t / total, 4)} for k, (c, t) in top],
    }))


def summary(work, out):
    res = {}
    for p in sorted(glob.glob(os.path.join(work, "results", "*.json"))):
        key = os.path.basename(p)[:-5]
        with open(p) as f:
            text = f.read().strip()
        try:
            res[key] = json.loads(text) if text else None
        except json.JSONDecodeError:
            # JSON lines (several runs): keep them all.
            res[key] = [json.loads(l) for l in text.splitlines() if l.strip().startswith("{")]
    t = res.get("train_torch_f32"), res.get("train_rdrop_f32")
    if all(isinstance(x, dict) and x.get("tgt_tokens_per_s") for x in t):
        res["train_ratio_rdrop_over_torch_f32"] = round(t[1]["tgt_tokens_per_s"] / t[0]["tgt_tokens_per_s"], 3)
    t = res.get("train_torch_bf16"), res.get("train_rdrop_bf16")
    if all(isinstance(x, dict) and x.get("tgt_tokens_per_s") for x in t):
        res["train_ratio_rdrop_over_torch_bf16"] = round(t[1]["tgt_tokens_per_s"] / t[0]["tgt_tokens_per_s"], 3)
    t = res.get("train_rdrop_f32_composed"), res.get("train_rdrop_f32")
    if all(isinstance(x, dict) and x.get("tgt_tokens_per_s") for x in t):
        res["train_ratio_kernels_over_composed_f32"] = round(t[1]["tgt_tokens_per_s"] / t[0]["tgt_tokens_per_s"], 3)
    tr = res.get("translate")
    if isinstance(tr, list):
        ratios = {}
        for beam in sorted({r.get("beam") for r in tr if isinstance(r, dict)}, key=str):
            ours = [r for r in tr if r.get("beam") == beam and r.get("engine") == "rdrop" and r.get("sentences")]
            peer = [r for r in tr if r.get("beam") == beam and r.get("engine") == "transformers"]
            if ours and peer and peer[0].get("sent_per_s"):
                ratios[f"beam{beam}"] = {
                    "whole_process": round(ours[0]["sent_per_s"] / peer[0]["sent_per_s"], 3),
                    "after_load": round(ours[0].get("sent_per_s_after_load", 0) / peer[0]["sent_per_s"], 3),
                }
        if ratios:
            res["translate_ratio_rdrop_over_transformers"] = ratios
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    cmds = {"corpus": corpus, "ids": ids, "peak": peak, "rdrop-train": rdrop_train, "ncu-top": ncu_top,
            "summary": summary}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        raise SystemExit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])
