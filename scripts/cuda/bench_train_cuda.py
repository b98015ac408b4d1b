#!/usr/bin/env python3
"""PyTorch + transformers peer for rdrop's CUDA training throughput: one Marian training step on a GPU.

The CUDA counterpart of ../shared/peers/bench_train.py (same loss, same random batches, same token
count), run by scripts/gpu-check.sh on the same GPU and in the same call as `rdrop train --device cuda`.

  --mode ce     label-smoothed CE on B rows
  --mode rdrop  the batch concatenated with itself (2B rows), one forward in train mode (dropout makes
                the two copies differ); loss = LS-CE over all 2B rows (token mean)
                + alpha * symmetric token-level KL between the halves (token mean over B rows), in f32
  --precision f32   everything in f32 (TF32 matmuls off, as candle's default)
  --precision bf16  torch.autocast(bfloat16): master weights, grads and AdamW state stay f32;
                    log-softmax, CE and KL are computed from logits cast to f32

Step = zero_grad + forward + loss + backward + AdamW.step, timed with torch.cuda.synchronize().
--phase-steps N: after the timed steps, N more steps synchronised after each phase (batch to the
device, forward, loss, backward, optimizer), as `rdrop train --profile-phases` times its own; the
medians in ms go into "phase_ms" (the throughput numbers come from the unsynchronised steps only).
tokens/s = non-pad target tokens (incl. EOS) of the ORIGINAL B rows / median step time.
Peak memory = torch.cuda.max_memory_allocated() (tensors) and max_memory_reserved() (allocator pool).

Random data: ids uniform in [2, V-2] (0 = </s>, 1 = <unk>, V-1 = <pad> excluded), each sentence's
length uniform in [ceil(min_frac*L), L] including a final </s>, right-padded to L.
"""
import argparse
import json
import math
import platform
import statistics
import time


def make_batches(n, B, Ls, Lt, V, min_frac, seed, torch):
    g = torch.Generator().manual_seed(seed)
    pad, eos = V - 1, 0
    out = []
    for _ in range(n):
        def side(L):
            lo = max(2, math.ceil(min_frac * L))
            lens = torch.randint(lo, L + 1, (B,), generator=g)
            ids = torch.randint(2, V - 1, (B, L), generator=g)
            pos = torch.arange(L)[None, :]
            ids = torch.where(pos == (lens[:, None] - 1), torch.full_like(ids, eos), ids)
            ids = torch.where(pos >= lens[:, None], torch.full_like(ids, pad), ids)
            return ids, lens
        src, _ = side(Ls)
        tgt, tlens = side(Lt)
        dec_in = torch.cat([torch.full((B, 1), pad, dtype=tgt.dtype), tgt[:, :-1]], dim=1)
        out.append(dict(input_ids=src, attention_mask=(src != pad).long(), decoder_input_ids=dec_in,
                        labels=tgt, n_tgt=int(tlens.sum()), n_src=int((src != pad).sum())))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="a Marian checkpoint dir (make_tiny_marian.py --preset opus)")
    ap.add_argument("--mode", choices=["ce", "rdrop"], default="rdrop")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--src-len", type=int, default=64)
    ap.add_argument("--tgt-len", type=int, default=64)
    ap.add_argument("--min-frac", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=5.0)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--adamw", choices=["fused", "foreach", "single"], default="fused")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to smoke-test this script without a GPU")
    ap.add_argument("--json-out", default=None, help="append the result JSON line here")
    ap.add_argument("--phase-steps", type=int, default=0, help="extra steps timed per phase (0: none)")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import MarianMTModel

    dev = torch.device(a.device)
    gpu = dev.type == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("bench_train_cuda: torch sees no GPU")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    # candle computes f32 matmuls in full f32; TF32 would make the f32 comparison unfair.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(a.seed)

    model = MarianMTModel.from_pretrained(a.model_dir, attn_implementation=a.attn, dtype=torch.float32).to(dev)
    model.train()
    cfg = model.config
    V, pad = cfg.vocab_size, cfg.pad_token_id
    assert pad == V - 1 and cfg.decoder_start_token_id == pad
    params = [p for p in model.parameters() if p.requires_grad]
    okw = dict(lr=a.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=a.weight_decay)
    okw.update({"fused": dict(fused=gpu), "foreach": dict(foreach=True), "single": dict(foreach=False)}[a.adamw])
    opt = torch.optim.AdamW(params, **okw)

    batches = make_batches(a.warmup + a.steps, a.batch, a.src_len, a.tgt_len, V, a.min_frac, a.seed + 1, torch)
    eps, alpha, B = a.label_smoothing, a.alpha, a.batch
    amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")

    def step(b, lap=lambda phase: None):
        opt.zero_grad(set_to_none=True)
        ids, am, dec, lab = (b[k].to(dev, non_blocking=True) for k in
                             ("input_ids", "attention_mask", "decoder_input_ids", "labels"))
        if a.mode == "rdrop":
            ids, am, dec, lab = (torch.cat([t, t], 0) for t in (ids, am, dec, lab))
        lap("batch")
        with amp:
            logits = model(input_ids=ids, attention_mask=am, decoder_input_ids=dec, use_cache=False).logits
        lap("forward")
        lp = torch.log_softmax(logits.float(), dim=-1)
        maskf = (lab != pad).to(lp.dtype)
        nll = -lp.gather(-1, lab.unsqueeze(-1)).squeeze(-1)
        ce_tok = (1.0 - eps) * nll + eps * (-lp.mean(-1))
        ce = (ce_tok * maskf).sum() / maskf.sum()
        loss, kl = ce, torch.zeros((), device=dev)
        if a.mode == "rdrop":
            lp1, lp2 = lp[:B], lp[B:]
            kl_tok = 0.5 * ((lp1.exp() - lp2.exp()) * (lp1 - lp2)).sum(-1)
            m1 = maskf[:B]
            kl = (kl_tok * m1).sum() / m1.sum()
            loss = ce + alpha * kl
        lap("loss")
        loss.backward()
        lap("backward")
        opt.step()
        lap("optimizer")
        return loss, ce, kl

    sync()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        out = step(b)
        sync()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
        if i == 0 or i == len(batches) - 1:
            losses.append([round(x.item(), 4) for x in out])
    phases = {k: [] for k in ("batch", "forward", "loss", "backward", "optimizer")}
    for i in range(a.phase_steps):
        clock = [None]

        def lap(phase):
            sync()
            now = time.perf_counter()
            phases[phase].append((now - clock[0]) * 1e3)
            clock[0] = now

        sync()
        clock[0] = time.perf_counter()
        step(batches[a.warmup + i % a.steps], lap)
    med = statistics.median(times)
    n_tgt = statistics.mean(b["n_tgt"] for b in batches[a.warmup:])
    n_src = statistics.mean(b["n_src"] for b in batches[a.warmup:])
    res = dict(
        bench="train", impl="torch", device=torch.cuda.get_device_name(0) if gpu else "cpu", mode=a.mode, precision=a.precision,
        d_model=cfg.d_model, layers=[cfg.encoder_layers, cfg.decoder_layers], heads=cfg.encoder_attention_heads,
        ffn=cfg.encoder_ffn_dim, vocab=V, dropout=cfg.dropout, attn=model.config._attn_implementation,
        params=sum(p.numel() for p in params), batch=B, rows=B * (2 if a.mode == "rdrop" else 1),
        src_len=a.src_len, tgt_len=a.tgt_len, min_frac=a.min_frac, alpha=alpha if a.mode == "rdrop" else None,
        label_smoothing=eps, adamw=a.adamw, warmup=a.warmup, steps=a.steps,
        tf32=torch.backends.cuda.matmul.allow_tf32,
        median_step_s=round(med, 5), min_step_s=round(min(times), 5), mean_step_s=round(statistics.mean(times), 5),
        tgt_tokens_per_step=n_tgt, src_tokens_per_step=n_src, tgt_tokens_per_s=round(n_tgt / med, 1),
        sent_per_s=round(B / med, 2),
        peak_gpu_allocated_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if gpu else None,
        peak_gpu_reserved_mib=round(torch.cuda.max_memory_reserved() / 2**20, 1) if gpu else None,
        first_last_loss_ce_kl=losses,
        phase_ms={k: round(statistics.median(v), 3) for k, v in phases.items()} if a.phase_steps else None,
        phase_steps=a.phase_steps,
        torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
    )
    line = json.dumps(res)
    print(line)
    if a.json_out:
        with open(a.json_out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
