#!/usr/bin/env python3
"""Reference values for crates/rdrop-loss, computed with PyTorch in float64.

The formulas follow upstream fairseq (fairseq/criterions/label_smoothed_cross_entropy.py:
`label_smoothed_nll_loss`, and label_smoothed_cross_entropy_with_rdrop.py: `duplicate_input`,
`compute_kl_loss`), which is also the official R-Drop plugin's structure:

    loss_sum = CE(copy 1) + CE(copy 2) + alpha * sum_tokens (KL(P1||P2) + KL(P2||P1)) / 2
    loss     = loss_sum / (non-pad target tokens of the ORIGINAL batch)

with label-smoothed CE giving 1 - eps to the gold class and eps / (V - 1) to every other class.
The KL uses torch.nn.functional.kl_div (a different formula from the Rust crate's
sum((p1 - p2) * (lp1 - lp2)) / 2), masked with the first half's target pad mask.

Inputs are random logits (float32-representable, some cases rounded to bfloat16 / float16) for a
doubled batch [2B, T, V] and targets [B, T] with padding, including a sentence that is all padding
except one token. Writes crates/rdrop-loss/tests/fixtures/rdrop_cases.json.

    PY=$(bash scripts/py-env.sh)/bin/python; $PY scripts/make_loss_fixtures.py
"""
import json
import pathlib

import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/rdrop-loss/tests/fixtures/rdrop_cases.json"
PAD = 1
B, T, V = 3, 6, 11


def label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index):
    """fairseq's label_smoothed_nll_loss with reduce=True (sum over non-pad tokens)."""
    target = target.unsqueeze(-1)
    nll_loss = -lprobs.gather(dim=-1, index=target)
    smooth_loss = -lprobs.sum(dim=-1, keepdim=True)
    pad_mask = target.eq(ignore_index)
    nll_loss = nll_loss.masked_fill(pad_mask, 0.0)
    smooth_loss = smooth_loss.masked_fill(pad_mask, 0.0)
    nll_loss = nll_loss.sum()
    smooth_loss = smooth_loss.sum()
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
    return loss, nll_loss


def compute_kl_loss(lprobs, pad_mask):
    """fairseq's compute_kl_loss: symmetric token-level KL, summed, halved."""
    probs = lprobs.exp()
    p, q = torch.split(lprobs, lprobs.size(0) // 2, dim=0)
    p_tec, q_tec = torch.split(probs, probs.size(0) // 2, dim=0)
    # kl_div(input=log P, target=Q) = Q * (log Q - log P), i.e. KL(Q || P) per vocabulary entry.
    p_loss = F.kl_div(p, q_tec, reduction="none").masked_fill(pad_mask, 0.0)
    q_loss = F.kl_div(q, p_tec, reduction="none").masked_fill(pad_mask, 0.0)
    return (p_loss.sum() + q_loss.sum()) / 2


def rdrop_reference(logits, target, eps, alpha):
    """logits: [2B, T, V] float64 (requires grad); target: [B, T] int64 original targets."""
    lprobs = F.log_softmax(logits, dim=-1)
    b = target.size(0)
    l1, l2 = lprobs[:b], lprobs[b:]
    ce1, nll1 = label_smoothed_nll_loss(l1, target, eps, PAD)
    ce2, nll2 = label_smoothed_nll_loss(l2, target, eps, PAD)
    pad_mask = target.unsqueeze(-1).eq(PAD)
    kl = compute_kl_loss(lprobs, pad_mask)
    loss_sum = ce1 + ce2 + alpha * kl
    ntokens = int(target.ne(PAD).sum())
    # Cross-check the split form against CE over the doubled batch, as fairseq computes it.
    ce_doubled, _ = label_smoothed_nll_loss(lprobs, torch.cat([target, target.clone()], 0), eps, PAD)
    assert torch.allclose(ce_doubled, ce1 + ce2)
    return dict(
        loss=loss_sum / ntokens,
        loss_sum=loss_sum,
        ce_sum=[ce1, ce2],
        nll_sum=[nll1, nll2],
        kl_sum=kl,
        ntokens=ntokens,
    )


def make_target(gen, lengths=None, pad_positions=None):
    tgt = torch.randint(0, V - 1, (B, T), generator=gen)
    tgt = tgt + (tgt >= PAD).long()  # real tokens are never the pad id
    if lengths is not None:
        for i, n in enumerate(lengths):
            tgt[i, n:] = PAD
    if pad_positions is not None:
        for i, t in pad_positions:
            tgt[i, t] = PAD
    return tgt


def value(t):
    return float(t.detach())


def as_float_list(t):
    return [float(x) for x in t.reshape(-1).tolist()]


def main():
    gen = torch.Generator().manual_seed(20210628)
    cases = []
    lengths = [6, 4, 1]  # right padding; the last sentence is all padding but one token

    def add_case(name, eps, alpha, dtype="f32", lengths=lengths, pad_positions=None, grad=False):
        logits32 = (3.0 * torch.randn(2 * B, T, V, generator=gen)).float()
        if dtype == "bf16":
            logits32 = logits32.bfloat16().float()
        elif dtype == "f16":
            logits32 = logits32.half().float()
        target = make_target(gen, lengths, pad_positions)
        logits = logits32.double().requires_grad_(True)
        ref = rdrop_reference(logits, target, eps, alpha)
        case = dict(
            name=name,
            eps=eps,
            alpha=alpha,
            pad_id=PAD,
            dtype=dtype,
            logits_shape=[2 * B, T, V],
            logits=as_float_list(logits32),
            target=[int(x) for x in target.reshape(-1).tolist()],
            lengths=lengths,
            expected=dict(
                loss=value(ref["loss"]),
                loss_sum=value(ref["loss_sum"]),
                ce_sum=[value(x) for x in ref["ce_sum"]],
                nll_sum=[value(x) for x in ref["nll_sum"]],
                kl_sum=value(ref["kl_sum"]),
                ntokens=ref["ntokens"],
            ),
        )
        if grad:
            ref["loss"].backward()
            case["grad_logits"] = as_float_list(logits.grad.detach())
        cases.append(case)

    for alpha in (0.0, 0.7, 5.0):
        for eps in (0.0, 0.1):
            add_case(f"alpha{alpha}_eps{eps}", eps, alpha, grad=(alpha == 5.0 and eps == 0.1))
    # Padding that is not at the end of the sentence: the mask, not the position, decides.
    add_case("scattered_pad", 0.1, 5.0, lengths=None, pad_positions=[(0, 0), (0, 3), (1, 5), (2, 1), (2, 2)])
    add_case("bf16_logits", 0.1, 5.0, dtype="bf16")
    add_case("f16_logits", 0.1, 0.7, dtype="f16")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        generator="scripts/make_loss_fixtures.py",
        torch=torch.__version__,
        note="fairseq label_smoothed_nll_loss (eps/(V-1)) + compute_kl_loss, float64",
    )
    OUT.write_text(json.dumps(dict(meta=meta, cases=cases)) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
