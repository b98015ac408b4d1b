#!/usr/bin/env python3
"""transformers peer for rdrop's CUDA decoding throughput: `generate` on a GPU, run by
scripts/gpu-check.sh on the same GPU, model, sources and settings as `rdrop translate --device cuda`.

Sources: the file rdrop translates (`--token-ids` lines: space-separated ids, each ending in </s>),
padded on the right per batch. Decoding is forced to exactly --new-tokens steps per sentence as
rdrop's run is (min_new_tokens = max_new_tokens, so </s> is banned until the last step, where the
opus-mt generation config's forced_eos_token_id emits it; bad_words_ids = [[pad]] as rdrop bans
pad). Batches of --batch sentences in file order; one warm-up batch, then the median of --repeats
passes over all sentences, each timed with torch.cuda.synchronize().
sentences/s = sentences / median wall time; tokens/s = new tokens of the best hypothesis per second.
--precision f32 (TF32 off, as candle's default) or bf16 (the model cast to bfloat16).
"""
import argparse
import json
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--ids", required=True, help="token-id source lines, as given to rdrop translate")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--device", default="cuda", help="cpu only to try the script where no GPU is")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import MarianMTModel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = MarianMTModel.from_pretrained(a.model_dir, attn_implementation=a.attn).to(dev).eval()
    if a.precision == "bf16":
        model = model.to(torch.bfloat16)
    pad, eos = model.config.pad_token_id, model.config.eos_token_id
    srcs = [[int(t) for t in line.split()] for line in open(a.ids) if line.strip()]
    # rdrop's --token-ids appends </s> to a source that lacks it.
    srcs = [s if s[-1] == eos else s + [eos] for s in srcs]
    batches = []
    for i in range(0, len(srcs), a.batch):
        b = srcs[i:i + a.batch]
        L = max(len(s) for s in b)
        ids = torch.tensor([s + [pad] * (L - len(s)) for s in b], device=dev)
        mask = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in b], device=dev)
        batches.append((ids, mask))

    def run(b):
        with torch.inference_mode():
            return model.generate(input_ids=b[0], attention_mask=b[1], num_beams=a.beam, do_sample=False,
                                  max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                                  bad_words_ids=[[pad]], early_stopping=False)

    run(batches[0])
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, new_tokens = [], 0
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        outs = [run(b) for b in batches]
        sync()
        times.append(time.perf_counter() - t0)
        # Output rows start with the decoder start token; count what was generated.
        new_tokens = sum((o.shape[1] - 1) * o.shape[0] for o in outs)
    wall = statistics.median(times)
    print(json.dumps({
        "engine": "transformers", "version": transformers.__version__, "torch": torch.__version__,
        "precision": a.precision, "attn": a.attn, "beam": a.beam, "batch": a.batch,
        "sentences": len(srcs), "new_tokens_each": a.new_tokens, "wall_s": round(wall, 4),
        "wall_s_runs": [round(t, 4) for t in times],
        "sent_per_s": round(len(srcs) / wall, 1), "tok_per_s": round(new_tokens / wall, 1),
        "peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if dev.type == "cuda" else None,
    }))


if __name__ == "__main__":
    main()
