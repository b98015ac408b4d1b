#!/usr/bin/env python3
"""Reference decoding outputs from transformers' `generate` for the decoding tests.

    PY=$(bash scripts/py-env.sh)/bin/python
    $PY scripts/make_decode_fixtures.py          # (re)writes tests/fixtures/decode/

The model fixtures (tests/fixtures/models/*, from scripts/make_model_fixtures.py) are random models that
never emit </s> before their length limit, so they cannot exercise how beam search finishes hypotheses.
This script therefore adds one checkpoint of its own:

  tests/fixtures/decode/early-eos/  a tiny Marian with the `opus` fixture's sizes and vocabulary, trained
                                    a few hundred steps to copy random sequences, so that its hypotheses
                                    end with </s> at many different steps (config.json,
                                    generation_config.json, model.safetensors; the tokenizer is the
                                    `opus` fixture's)

and writes, for every model fixture and for early-eos,

  tests/fixtures/decode/<variant>.json  {
    "variant", "weights_sha256": sha256 of the weight file the references were computed with,
    "src_ids": [[int]] (unpadded, each ends with </s>),
    "cases": [ {"name", "settings": {generate kwargs}, "sequences": [[int]] exactly as generate returns
                them (decoder start first, right-padded with pad after </s>), "sequences_scores": [float]
                (beam search only)} ... ],
    "score": {"src_ids", "tgt_ids", "token_logprobs": [[float]]}   (early-eos only; natural log,
                log_softmax of the unmodified logits at each target token, </s> included)
  }

and tests/fixtures/decode/cli.json: text lines translated with the `opus` tokenizer by the opus and
early-eos models (MarianTokenizer -> generate -> batch_decode(skip_special_tokens=True)), one line at a
time, including an over-long line that is truncated to max_position_embeddings - 1 tokens + </s> first,
and the force-decoding log-probabilities of each (line, greedy translation) pair.

Every generate call passes its settings explicitly on a model whose generation_config holds only the
special ids, so nothing is inherited silently (transformers' global defaults apply to the rest).
"""
import hashlib
import json
import os
import random
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(REPO, "tests", "fixtures", "models")
OUT = os.path.join(REPO, "tests", "fixtures", "decode")
VARIANTS = ["opus", "separate-vocab", "untied-relu", "minimal-config", "pytorch-bin"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weight_file(d):
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise SystemExit(f"no weights in {d}")


def opus_style(pad):
    """The generation settings of an opus-mt generation_config.json (plus no length limit of its own)."""
    return dict(bad_words_ids=[[pad]], forced_eos_token_id=0, renormalize_logits=True)


def cases(pad, full):
    """(name, generate kwargs). `full` adds the rarer settings (run on early-eos and opus)."""
    o = opus_style(pad)
    c = [
        ("greedy", dict(num_beams=1, max_new_tokens=20, **o)),
        ("beam4-lp1-n4", dict(num_beams=4, length_penalty=1.0, num_return_sequences=4, max_new_tokens=20, **o)),
        ("beam4-lp0.6-n2", dict(num_beams=4, length_penalty=0.6, num_return_sequences=2, max_new_tokens=20, **o)),
        ("beam4-never-lp0.6", dict(num_beams=4, length_penalty=0.6, early_stopping="never", max_new_tokens=20, **o)),
        ("greedy-ngram3", dict(num_beams=1, no_repeat_ngram_size=3, max_new_tokens=20, **o)),
    ]
    if full:
        c += [
            ("greedy-max1", dict(num_beams=1, max_new_tokens=1, **o)),
            ("greedy-max3", dict(num_beams=1, max_new_tokens=3, **o)),
            ("greedy-ngram2", dict(num_beams=1, no_repeat_ngram_size=2, max_new_tokens=20, **o)),
            ("greedy-min6", dict(num_beams=1, min_new_tokens=6, max_new_tokens=20, **o)),
            ("greedy-plain", dict(num_beams=1, max_new_tokens=20)),
            ("beam4-lp2", dict(num_beams=4, length_penalty=2.0, max_new_tokens=20, **o)),
            ("beam4-lp0-never", dict(num_beams=4, length_penalty=0.0, early_stopping="never", max_new_tokens=20, **o)),
            ("beam4-early-n4", dict(num_beams=4, length_penalty=1.0, early_stopping=True, num_return_sequences=4,
                                    max_new_tokens=20, **o)),
            ("beam4-never-n4", dict(num_beams=4, length_penalty=1.0, early_stopping="never", num_return_sequences=4,
                                    max_new_tokens=20, **o)),
            ("beam2-n2", dict(num_beams=2, num_return_sequences=2, max_new_tokens=20, **o)),
            ("beam5-ngram2-n3", dict(num_beams=5, no_repeat_ngram_size=2, num_return_sequences=3, max_new_tokens=20,
                                     **o)),
            ("beam4-min5", dict(num_beams=4, min_new_tokens=5, max_new_tokens=20, **o)),
            ("beam4-max2", dict(num_beams=4, max_new_tokens=2, **o)),
            ("beam4-max7-n4", dict(num_beams=4, num_return_sequences=4, max_new_tokens=7, **o)),
            ("beam4-no-renorm", dict(num_beams=4, bad_words_ids=[[pad]], forced_eos_token_id=0, max_new_tokens=20)),
            ("beam4-plain-n2", dict(num_beams=4, num_return_sequences=2, max_new_tokens=20)),
            ("beam3-lpneg-never", dict(num_beams=3, length_penalty=-0.5, early_stopping="never", max_new_tokens=20,
                                       **o)),
        ]
    return c


def sources(rng, vocab, lengths):
    return [[rng.randrange(2, vocab - 1) for _ in range(k)] + [0] for k in lengths]


def pad_batch(rows, pad):
    w = max(len(r) for r in rows)
    return [r + [pad] * (w - len(r)) for r in rows], [[1] * len(r) + [0] * (w - len(r)) for r in rows]


def strip_generation_config(model, pad):
    from transformers import GenerationConfig
    model.generation_config = GenerationConfig(decoder_start_token_id=pad, eos_token_id=0, pad_token_id=pad)


def run_cases(model, src, pad, full):
    import torch
    ids, mask = pad_batch(src, pad)
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    out = []
    for name, kw in cases(pad, full):
        with torch.no_grad():
            o = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, return_dict_in_generate=True,
                               output_scores=True, **kw)
        entry = dict(name=name, settings=kw, sequences=o.sequences.tolist())
        if kw["num_beams"] > 1:
            entry["sequences_scores"] = [float(x) for x in o.sequences_scores]
        out.append(entry)
    return out


def make_early_eos(target, steps=400):
    """A tiny Marian (the `opus` fixture's sizes and vocabulary) trained for a few hundred seeded Adam steps
    to copy random sequences. That far into training it has learnt the output length but not yet the
    tokens, so its hypotheses end with </s> at many different steps: what beam search's finishing,
    length-penalty and early-stopping rules need to be tested on."""
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel
    torch.manual_seed(21)
    rng = random.Random(21)
    cfg = MarianConfig(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       activation_function="swish", scale_embedding=True, max_position_embeddings=128,
                       pad_token_id=127, decoder_start_token_id=127, eos_token_id=0, forced_eos_token_id=0,
                       dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, architectures=["MarianMTModel"])
    model = MarianMTModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        src = [[rng.randrange(2, 40) for _ in range(rng.randint(1, 14))] + [0] for _ in range(32)]
        ids, mask = pad_batch(src, 127)
        labels = torch.tensor(pad_batch(src, 127)[0])
        labels[labels == 127] = -100
        loss = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=127, eos_token_id=0, pad_token_id=127, forced_eos_token_id=0,
        bad_words_ids=[[127]], renormalize_logits=True, max_length=512, num_beams=4)
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target)
    print(f"early-eos: final training loss {loss.item():.3f}", file=sys.stderr)


def main():
    import torch
    from transformers import MarianMTModel, MarianTokenizer
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    eos_dir = os.path.join(OUT, "early-eos")
    make_early_eos(eos_dir)

    for name, d in [(v, os.path.join(MODELS, v)) for v in VARIANTS] + [("early-eos", eos_dir)]:
        model = MarianMTModel.from_pretrained(d).eval()
        pad = model.config.pad_token_id
        v_src = model.config.vocab_size
        v_dec = model.config.decoder_vocab_size or v_src
        rng = random.Random(sum(map(ord, name)))
        src = sources(rng, min(v_src, pad + 1), [0, 2, 4, 6, 9, 12, 15, 19])
        strip_generation_config(model, pad)
        full = name in ("early-eos", "opus")
        ref = dict(variant=name, weights_sha256=sha256(weight_file(d)), src_ids=src,
                   cases=run_cases(model, src, pad, full))
        if name == "early-eos":
            tgt = [[rng.randrange(1, v_dec - 1) for _ in range(k)] + [0] for k in [0, 3, 7, 11]]
            s_ids, s_mask = pad_batch(src[:4], pad)
            t_lab, _ = pad_batch(tgt, pad)
            t_in = [[pad] + r[:-1] for r in t_lab]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor(s_ids), attention_mask=torch.tensor(s_mask),
                               decoder_input_ids=torch.tensor(t_in)).logits
                lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(t_lab).unsqueeze(-1)).squeeze(-1)
            ref["score"] = dict(src_ids=src[:4], tgt_ids=tgt,
                                token_logprobs=[[float(x) for x in lp[i, :len(t)]] for i, t in enumerate(tgt)])
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(ref, f, indent=None, separators=(",", ":"))
            f.write("\n")
        ends = [r[1:].index(0) + 1 if 0 in r[1:] else None for r in ref["cases"][0]["sequences"]]
        print(f"{name}: greedy ends at {ends}", file=sys.stderr)

    # CLI references: text in, text out, one sentence at a time.
    tok = MarianTokenizer.from_pretrained(os.path.join(MODELS, "opus"))
    rng = random.Random(7)
    pieces = sorted(p.lstrip("\u2581") for p in tok.get_vocab() if p.startswith("\u2581") and len(p) > 2)
    lines = []
    for k in [5, 1, 9, 3, 14, 2, 7]:
        lines.append(" ".join(rng.choice(pieces) for _ in range(k)).capitalize() + ".")
    long_line = " ".join(rng.choice(pieces) for _ in range(200)) + "."
    cli = dict(lines=lines, long_line=long_line, max_new_tokens=16, models={})
    for name, d in [("opus", os.path.join(MODELS, "opus")), ("early-eos", eos_dir)]:
        model = MarianMTModel.from_pretrained(d).eval()
        strip_generation_config(model, 127)
        max_pos = model.config.max_position_embeddings
        res = {}
        for label, kw in [("greedy", dict(num_beams=1)), ("beam4", dict(num_beams=4))]:
            outs = []
            for line in lines + [long_line]:
                ids = tok(line).input_ids
                if len(ids) > max_pos:
                    ids = ids[:max_pos - 1] + [0]
                with torch.no_grad():
                    seq = model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=16,
                                         **opus_style(127), **kw)
                outs.append(tok.decode(seq[0], skip_special_tokens=True))
            res[label] = dict(translations=outs[:-1], long_line=outs[-1])
        # Force-decoding scores of (line, its greedy translation) pairs, one pair at a time.
        pairs = []
        for line, hyp in zip(lines, res["greedy"]["translations"]):
            s_ids = tok(line).input_ids
            t_ids = tok(text_target=hyp).input_ids
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([s_ids]),
                               decoder_input_ids=torch.tensor([[127] + t_ids[:-1]])).logits
                lp = torch.log_softmax(logits, -1)[0].gather(-1, torch.tensor(t_ids).unsqueeze(-1)).squeeze(-1)
            pairs.append(dict(target=hyp, target_ids=t_ids, token_logprobs=[float(x) for x in lp]))
        res["score"] = pairs
        cli["models"][name] = res
    cli["long_line_tokens"] = len(tok(long_line).input_ids)
    with open(os.path.join(OUT, "cli.json"), "w") as f:
        json.dump(cli, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
