#!/usr/bin/env python3
"""Generate tests/fixtures/bleu/cases.json: reference BLEU/chrF results from sacreBLEU 2.6.0.

Inputs: short excerpts of the corpora under ../shared/data (WMT17 en-de systems, Multi30k captions
in four languages with its five-reference task-2 captions, IWSLT14 tokenised lowercased text),
perturbed deterministically (empty lines, Unicode punctuation, numbers like 1,000.5, CJK, HTML
entities, odd whitespace, case changes), plus the documented examples of sacreBLEU's own test suite
(test_bleu.py, test_chrf.py, test_sentence_bleu.py), whose published expected values are asserted
here against the installed sacreBLEU before anything is written.

For each case the file stores the inputs, the configuration and what sacreBLEU computes: corpus
score, raw sufficient statistics (counts/totals/lengths for BLEU, [hyp, ref, match] per order for
chrF), precisions, brevity penalty, text output and signature; tokenizer outputs line by line;
sentence-level scores; and paired-test inputs (numpy's resampling indices and AR masks) with
sacreBLEU's results, so the Rust tests can feed the same samples.

Usage: PY=$(bash scripts/py-env.sh)/bin/python; $PY scripts/make_bleu_cases.py
"""
import json
import os
import random
import sys

import numpy as np
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu import significance

assert sacrebleu.__version__ == "2.6.0", sacrebleu.__version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "tests", "fixtures", "bleu", "cases.json")


def read(rel, start=0, n=20):
    with open(os.path.join(DATA, rel), encoding="utf-8", newline="\n") as f:
        lines = [line.rstrip() for line in f]
    return lines[start:start + n]


UNI_PUNCT = ["“", "”", "„", "«", "»", "–", "—", "…", "’", "¿", "¡", "·", "§", "€", "™", "°", "½"]
NUMBERS = ["1,000.5", "3.14", "2-3", "10,000", "1999.", "12:30", "-5", "3.", ",5", "42%", "$1,5"]
CJK = ["我们今天很高兴。", "東京", "北京大学", "（注意）", "日本語のテキスト", "한국어 문장", "，", "ＡＢＣ"]
ODD = ["&amp;", "&quot;hi&quot;", "&lt;b&gt;", "<skipped>", "a&amp;lt;b", "x--y", "well-known", "U.S.A.", "e.g.,"]
SPACES = ["  ", "\u00a0", "\u3000", "\u2009", "\x1c", "\t"]
CASE = ["İstanbul", "STRASSE", "Straße", "ΟΔΟΣ", "ÉCOLE", "DŽungla", "ǅ"]


def perturb(lines, rng, rate=0.3):
    """Deterministic edits exercising tokenizer corners; keeps the line count."""
    out = []
    for line in lines:
        w = line.split(" ")
        if rng.random() < 0.08:
            out.append("")
            continue
        for pool in (UNI_PUNCT, NUMBERS, CJK, ODD, CASE):
            if rng.random() < rate:
                w.insert(rng.randrange(len(w) + 1), rng.choice(pool))
        if rng.random() < rate:
            i = rng.randrange(len(w))
            w[i] = w[i] + rng.choice(UNI_PUNCT + [",", ".", ";", "!", "?", ")"])
        s = " ".join(w)
        if rng.random() < rate:
            s = s.replace(" ", rng.choice(SPACES), 1)
        if rng.random() < 0.1:
            s = s.upper()
        out.append(s)
    return out


def mt_like(lines, rng):
    """A fake system output: word drops, substitutions from the same text, swaps."""
    vocab = [w for line in lines for w in line.split()] or ["x"]
    out = []
    for line in lines:
        h = []
        for w in line.split():
            x = rng.random()
            if x < 0.08:
                continue
            if x < 0.25:
                w = rng.choice(vocab)
            h.append(w)
        for j in range(len(h) - 1):
            if rng.random() < 0.08:
                h[j], h[j + 1] = h[j + 1], h[j]
        out.append(" ".join(h))
    return out


def build_texts():
    rng = random.Random(20240601)
    t = {}
    wmt = "wmt17_en_de"
    t["wmt_ref"] = read(f"{wmt}/newstest2017-ende-ref.de", 0, 24)
    t["wmt_uedin"] = read(f"{wmt}/systems/newstest2017.uedin-nmt.4722.en-de", 0, 24)
    t["wmt_onlineA"] = read(f"{wmt}/systems/newstest2017.online-A.0.en-de", 0, 24)  # line 1 has a BOM
    t["wmt_promt"] = read(f"{wmt}/systems/newstest2017.PROMT-Rule-based.4735.en-de", 0, 24)
    for lang in ("en", "de", "fr", "cs"):
        ref = read(f"multi30k/raw/test_2016_flickr.{lang}", 100, 20)
        t[f"m30k_{lang}_ref"] = ref
        t[f"m30k_{lang}_hyp"] = mt_like(ref, rng)
    for k in range(1, 4):
        t[f"m30k_task2_en_{k}"] = read(f"multi30k/task2_raw/test_2016.{k}.en", 200, 20)
    t["m30k_task2_en_hyp"] = read("multi30k/task2_raw/test_2016.5.en", 200, 20)
    t["iwslt_ref"] = read("iwslt14/tok/test.en", 300, 20)
    t["iwslt_hyp"] = mt_like(t["iwslt_ref"], rng)
    t["pert_ref"] = perturb(read("multi30k/raw/test_2017_flickr.en", 50, 24), rng)
    t["pert_hyp"] = perturb(mt_like(t["pert_ref"], rng), rng)
    t["pert_wmt_ref"] = perturb(read(f"{wmt}/newstest2017-ende-ref.de", 500, 20), rng, 0.5)
    t["pert_wmt_hyp"] = perturb(read(f"{wmt}/systems/newstest2017.KIT.4950.en-de", 500, 20), rng, 0.5)
    t["pert_wmt_hyp2"] = perturb(read(f"{wmt}/systems/newstest2017.xmu.4910.en-de", 500, 20), rng, 0.5)
    # Mixed-script lines for the zh and char tokenizers.
    zh_base = CJK + ["他说：“我们明天见。”", "价格是1,000.5元。", "这是2024年的数据——非常好！", "Hello 世界, 100%!"]
    t["zh_ref"] = [rng.choice(zh_base) + rng.choice(zh_base) + " " + rng.choice(zh_base) for _ in range(16)]
    t["zh_hyp"] = [s if rng.random() < 0.3 else s[::-1] if rng.random() < 0.3 else s[: len(s) // 2] + rng.choice(zh_base)
                   for s in t["zh_ref"]]
    # sacreBLEU's own test-suite inputs.
    t["sb_hyps"] = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    t["sb_ref1"] = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]
    t["sb_ref2"] = ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]
    t["sb_empty"] = ["", "", ""]
    return t


def bleu_stats(metric, hyps, refs):
    stats = metric._extract_corpus_statistics(hyps, refs)
    return [int(x) for x in np.array(stats, dtype=np.int64).sum(0)]


def bleu_case(texts, name, hyp, refs, **kw):
    m = BLEU(**kw)
    hyps, rs = texts[hyp], [texts[r] for r in refs]
    s = m.corpus_score(hyps, rs)
    raw = bleu_stats(m, hyps, rs)
    n = m.max_ngram_order
    sig = m.get_signature()
    return dict(name=name, hyp=hyp, refs=refs, config=kw, score=s.score, sys_len=raw[0], ref_len=raw[1],
                counts=raw[2:2 + n], totals=raw[2 + n:], precisions=list(map(float, s.precisions)), bp=s.bp,
                text=s.format(width=2, signature=sig.format()), signature=sig.format(),
                short_signature=sig.format(short=True))


def bleu_sentence_case(texts, name, hyp, refs, **kw):
    m = BLEU(**kw)
    out = []
    for i, h in enumerate(texts[hyp]):
        r = [texts[x][i] for x in refs]
        s = m.sentence_score(h, r)
        out.append(dict(score=s.score, verbose=s._verbose))
    return dict(name=name, hyp=hyp, refs=refs, config=kw, sentences=out, signature=m.get_signature().format())


def chrf_case(texts, name, hyp, refs, sentence=False, **kw):
    m = CHRF(**kw)
    hyps, rs = texts[hyp], [texts[r] for r in refs]
    s = m.corpus_score(hyps, rs)
    stats = [int(x) for x in np.array(m._extract_corpus_statistics(hyps, rs), dtype=np.int64).sum(0)]
    case = dict(name=name, hyp=hyp, refs=refs, config=kw, score=s.score, stats=stats, score_name=s.name,
                signature=m.get_signature().format())
    if sentence:
        case["sentences"] = [m.sentence_score(h, [x[i] for x in rs]).score for i, h in enumerate(hyps)]
    return case


def check_published(texts):
    """sacreBLEU's documented test vectors still hold for the installed release."""
    refs = [texts["sb_ref1"], texts["sb_ref2"]]
    for hyps, kw, exp in [(texts["sb_hyps"], {}, 48.530827), (texts["sb_empty"], {}, 0.0),
                          (texts["sb_hyps"], {"tokenize": "none"}, 49.1919566),
                          (texts["sb_hyps"], {"tokenize": "intl"}, 43.91623493)]:
        assert abs(sacrebleu.corpus_bleu(hyps, refs, **kw).score - exp) < 1e-6
    ref, sys_ = "producţia de zahăr brut se exprimă în zahăr alb;", \
        "Producția de zahăr primă va fi exprimată în ceea ce privește zahărul alb;"
    for sm, sv, lc, tok, exp in [("exp", None, False, "13a", 8.493), ("floor", 0.5, False, "13a", 10.10),
                                 ("add-k", 2, False, "13a", 21.389), ("exp", None, True, "char", 42.0267)]:
        s = BLEU(lowercase=lc, tokenize=tok, smooth_method=sm, smooth_value=sv, effective_order=True)
        assert abs(s.sentence_score(sys_, [ref]).score - exp) < 1e-3
    assert abs(sacrebleu.corpus_chrf(["aa"], [["ab"]], char_order=6, word_order=0, beta=3,
                                     eps_smoothing=True).score - 8.3333) < 1e-4


def cli_cases(texts):
    """sacreBLEU's command line on small files (BOM, CRLF, trailing blanks, tabs): exact stdout."""
    import subprocess
    import tempfile
    exe = os.path.join(os.path.dirname(sys.executable), "sacrebleu")
    j = "\n".join
    files = {
        "ref.txt": j(texts["pert_wmt_ref"]) + "\n",
        "hyp.txt": "\ufeff" + j(texts["pert_wmt_hyp"]) + "\n",
        "hyp2.txt": j(texts["pert_wmt_hyp2"]),  # no final newline
        "crlf.txt": "\r\n".join(x + "  " for x in texts["pert_wmt_hyp"]) + "\r\n",
        "tabref.txt": j(a.replace("\t", " ") + "\t" + (b.replace("\t", " ") or "-")
                        # a line ending in an empty field would lose its tab to rstrip()
                        for a, b in zip(texts["pert_wmt_ref"], texts["pert_wmt_hyp2"])) + "\n",
        "ref2.txt": j(texts["pert_wmt_hyp2"]) + "\n",
        "zh_ref.txt": j(texts["zh_ref"]) + "\n",
        "zh_hyp.txt": j(texts["zh_hyp"]) + "\n",
    }
    runs = [
        ["ref.txt", "-i", "hyp.txt", "-f", "text"],
        ["ref.txt", "-i", "hyp.txt", "-f", "json"],
        ["ref.txt", "-i", "hyp.txt", "-m", "bleu", "chrf", "-f", "text", "-w", "3"],
        ["ref.txt", "-i", "hyp.txt", "-m", "chrf", "bleu", "-f", "json"],
        ["ref.txt", "-i", "hyp.txt", "-m", "chrf", "--chrf-word-order", "2", "-f", "text", "--short"],
        ["ref.txt", "-i", "crlf.txt", "-f", "text", "-w", "4", "-lc", "-tok", "intl"],
        ["ref.txt", "-i", "hyp2.txt", "-b", "-w", "4", "-s", "add-k", "-sv", "2"],
        ["ref.txt", "-i", "hyp2.txt", "-b", "-f", "json"],
        ["ref.txt", "ref2.txt", "-i", "hyp.txt", "-f", "text", "-s", "floor"],
        ["tabref.txt", "-nr", "2", "-i", "hyp.txt", "-f", "text", "-s", "floor", "-sv", "0.25"],
        ["ref.txt", "-i", "hyp.txt", "-sl", "-f", "text"],
        ["ref.txt", "-i", "hyp.txt", "-sl", "-m", "chrf", "-b", "-w", "3"],
        ["ref.txt", "-i", "hyp.txt", "hyp2.txt", "crlf.txt", "-f", "text"],
        ["ref.txt", "-i", "hyp.txt", "hyp2.txt", "-m", "bleu", "chrf", "-f", "json", "-w", "2"],
        ["zh_ref.txt", "-i", "zh_hyp.txt", "-tok", "zh", "-f", "text"],
        ["zh_ref.txt", "-i", "zh_hyp.txt", "-tok", "char", "-m", "bleu", "chrf", "--chrf-whitespace", "-f", "text"],
    ]
    out = []
    with tempfile.TemporaryDirectory() as d:
        for name, content in files.items():
            with open(os.path.join(d, name), "w", encoding="utf-8", newline="") as f:
                f.write(content)
        env = dict(os.environ, NO_COLOR="1")
        env.pop("SACREBLEU_FORMAT", None)
        for args in runs:
            r = subprocess.run([exe, *args, "-q"], cwd=d, env=env, capture_output=True, text=True, check=True)
            out.append(dict(args=args, stdout=r.stdout))
        # Standard input: universal newlines, tab-separated systems.
        one = "\r\n".join(x.replace("\t", " ") + " " for x in texts["pert_wmt_hyp"]) + "\r\n"
        two = j(a.replace("\t", " ") + "\t" + (b.replace("\t", " ") or "-")
                for a, b in zip(texts["pert_wmt_hyp"], texts["pert_wmt_hyp2"])) + "\n"
        for stdin_run, text in ((["ref.txt", "-f", "text", "-w", "3"], one), (["ref.txt", "-f", "text"], two),
                                (["ref.txt", "-f", "json", "-m", "chrf"], two)):
            r = subprocess.run([exe, *stdin_run, "-q"], cwd=d, env=env, capture_output=True, text=True, check=True,
                               input=text)
            out.append(dict(args=stdin_run, stdin=text, stdout=r.stdout))
    return dict(files=files, runs=out)


def main():
    if not os.path.isdir(DATA):
        sys.exit(f"{DATA} not found: the generator reads the shared corpora")
    texts = build_texts()
    check_published(texts)
    # Extra sacreBLEU test-suite vectors, stored as texts so cases can name them.
    extra = {
        "sb_sent_ref": ["producţia de zahăr brut se exprimă în zahăr alb;"],
        "sb_sent_sys": ["Producția de zahăr primă va fi exprimată în ceea ce privește zahărul alb;"],
        "sb_zero_ref": ["okay thanks"], "sb_zero_sys": ["this is a cat"],
        "sb_eff_h": ["test", "a test", "a little test"], "sb_eff_r": ["a test", "a test", "a test"],
        "sb_off_h": ["am I am a character sequence"], "sb_off_r": ["I am a symbol string sequence a a"],
        "sb_chrf_h": ["abcdefg", "a", "", "", "", "aa", "a", "a b c", "a b c",
                      " risk assessment must be made of those who are qualified and expertise in the sector - these are the scientists .",
                      " Die    Beziehung zwischen  Obama und Netanjahu ist nicht gerade  freundlich. ",
                      "Niemand hat die Absicht, eine Mauer zu errichten",
                      "Co nás nejvíc trápí, protože lékaři si vybírají, kdo bude žít a kdo zemře.",
                      "Nebo prostě nemají vybavení, které by jim pomohlo, uvedli lékaři."],
        "sb_chrf_r": ["hijklmnop", "b", "b", "ref", "reference", "ab", "a", "a b c", "abc",
                      "risk assessment has to be undertaken by those who are qualified and expert in that area - that is the scientists .",
                      "Das Verhältnis zwischen Obama und Netanyahu ist nicht gerade freundschaftlich.",
                      "Niemand hat die Absicht, eine Mauer zu errichten",
                      "Nejvíce smutní jsme z toho, že musíme rozhodovat o tom, kdo bude žít a kdo zemře.",
                      "A někdy nemáme ani potřebný materiál, abychom jim pomohli, popsali lékaři."],
    }
    texts.update(extra)

    pairs = [("wmt_uedin", ["wmt_ref"]), ("wmt_onlineA", ["wmt_ref"]), ("wmt_promt", ["wmt_ref"]),
             ("m30k_en_hyp", ["m30k_en_ref"]), ("m30k_de_hyp", ["m30k_de_ref"]), ("m30k_fr_hyp", ["m30k_fr_ref"]),
             ("m30k_cs_hyp", ["m30k_cs_ref"]), ("iwslt_hyp", ["iwslt_ref"]), ("pert_hyp", ["pert_ref"]),
             ("pert_wmt_hyp", ["pert_wmt_ref"]), ("zh_hyp", ["zh_ref"]),
             ("m30k_task2_en_hyp", ["m30k_task2_en_1", "m30k_task2_en_2", "m30k_task2_en_3"]),
             ("pert_wmt_hyp", ["pert_wmt_ref", "pert_wmt_hyp2"]), ("sb_hyps", ["sb_ref1", "sb_ref2"]),
             ("sb_empty", ["sb_ref1", "sb_ref2"])]
    bleu, sent, chrf, tok = [], [], [], []
    for hyp, refs in pairs:
        tag = f"{hyp}~{'+'.join(refs)}"
        for t in ("13a", "intl", "char", "zh", "none"):
            for lc in (False, True):
                bleu.append(bleu_case(texts, f"{tag}/{t}/lc={lc}", hyp, refs, tokenize=t, lowercase=lc))
        for sm, sv in (("none", None), ("floor", None), ("floor", 0.3), ("add-k", None), ("add-k", 2.5), ("exp", None)):
            bleu.append(bleu_case(texts, f"{tag}/smooth={sm}:{sv}", hyp, refs, smooth_method=sm, smooth_value=sv))
            bleu.append(bleu_case(texts, f"{tag}/smooth={sm}:{sv}/eff", hyp, refs, smooth_method=sm,
                                  smooth_value=sv, effective_order=True))
        for order in (1, 2, 6):
            bleu.append(bleu_case(texts, f"{tag}/order={order}", hyp, refs, max_ngram_order=order))
        for kw in ({}, {"word_order": 2}, {"whitespace": True}, {"lowercase": True}, {"eps_smoothing": True},
                   {"beta": 1}, {"beta": 3, "word_order": 1}, {"char_order": 4}, {"char_order": 8, "word_order": 3}):
            chrf.append(chrf_case(texts, f"{tag}/{kw}", hyp, refs, **kw))
    for hyp, refs in [("pert_hyp", ["pert_ref"]), ("zh_hyp", ["zh_ref"]), ("wmt_onlineA", ["wmt_ref"]),
                      ("m30k_task2_en_hyp", ["m30k_task2_en_1", "m30k_task2_en_2"]), ("sb_sent_sys", ["sb_sent_ref"]),
                      ("sb_zero_sys", ["sb_zero_ref"]), ("sb_eff_h", ["sb_eff_r"]), ("sb_off_h", ["sb_off_r"])]:
        tag = f"{hyp}~{'+'.join(refs)}"
        for sm, sv in (("exp", None), ("none", None), ("floor", None), ("floor", 0.5), ("add-k", None), ("add-k", 2)):
            for t, lc in (("13a", False), ("intl", False), ("char", True), ("none", False)):
                sent.append(bleu_sentence_case(texts, f"{tag}/{sm}:{sv}/{t}/lc={lc}", hyp, refs, smooth_method=sm,
                                               smooth_value=sv, tokenize=t, lowercase=lc, effective_order=True))
        chrf.append(chrf_case(texts, f"{tag}/sentence", hyp, refs, sentence=True))
        chrf.append(chrf_case(texts, f"{tag}/sentence++", hyp, refs, sentence=True, word_order=2))
    for kw in ({"char_order": 6, "word_order": 0, "beta": 3, "eps_smoothing": True},
               {"char_order": 6, "word_order": 0, "beta": 3, "eps_smoothing": False},
               {"char_order": 6, "word_order": 0, "beta": 3, "whitespace": True}):
        chrf.append(chrf_case(texts, f"sb_chrf/{kw}", "sb_chrf_h", ["sb_chrf_r"], sentence=True, **kw))

    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    from sacrebleu.tokenizers.tokenizer_intl import TokenizerV14International
    from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh
    from sacrebleu.tokenizers.tokenizer_char import TokenizerChar
    toks = {"13a": Tokenizer13a(), "intl": TokenizerV14International(), "zh": TokenizerZh(), "char": TokenizerChar()}
    corner = ["a..b", "a.,b", "1.,2", "x,.5", "1,000.5", "3-4-5", "a-1", "1-a", "&amp;lt;", "&quot;x&quot;", "<skipped>x",
              "U.S.A.", "end 1999.", "(hi)", "'quote'", "a\u00a0b", "a\x1cb", "€5", "5€", "½", "–", "…", "“x”",
              "ﬁ", "\ufeffBOM", "x\u200by", "ﾊﾝｶｸ", "𠀀𠀁", "⁉", "№1", "٣٫٥", "a\tb", " lead", "trail "]
    lines = corner + [x for k in ("pert_ref", "pert_wmt_hyp", "zh_ref", "wmt_onlineA") for x in texts[k][:12]]
    for name, tk in toks.items():
        for line in lines:
            tok.append([name, line, tk(line)])

    # Paired tests on a small system pair, with the very samples numpy draws in sacreBLEU.
    sig = {}
    hyps_a, hyps_b, refs = texts["pert_wmt_hyp"], texts["pert_wmt_hyp2"], [texts["pert_wmt_ref"]]
    n_bs, n_ar, seed = 200, 300, 12345
    for mname, metric in (("bleu", BLEU(references=refs)), ("chrf", CHRF(references=refs))):
        bl_stats = metric._extract_corpus_statistics(hyps_a, None)
        bl = significance.Result(metric._aggregate_and_compute(bl_stats).score)
        info = {metric._aggregate_and_compute(bl_stats).name: (bl_stats, bl)}
        named = {k: metric for k in info}
        _, bs = significance._paired_bs_test(info, "b", hyps_b, None, named, n_samples=n_bs, seed=seed)
        _, ar = significance._paired_ar_test(info, "b", hyps_b, None, named, n_samples=n_ar, seed=seed)
        bs, ar = list(bs.values())[0], list(ar.values())[0]
        sig[mname] = dict(bs=dict(score=bs.score, p_value=bs.p_value, mean=float(bs.mean), ci=float(bs.ci)),
                          ar=dict(score=ar.score, p_value=ar.p_value))
    n = len(hyps_a)
    sig["bs_indices"] = np.random.default_rng(seed).choice(n, size=(n_bs, n), replace=True).tolist()
    sig["ar_masks"] = ["".join("1" if x else "0" for x in row)
                       for row in np.random.default_rng(seed).integers(2, size=(n_ar, n), dtype=bool)]
    sig.update(hyp_a="pert_wmt_hyp", hyp_b="pert_wmt_hyp2", refs=["pert_wmt_ref"])

    out = dict(sacrebleu=sacrebleu.__version__, generator="scripts/make_bleu_cases.py", texts=texts,
               bleu=bleu, bleu_sentence=sent, chrf=chrf, tokenize=tok, significance=sig, cli=cli_cases(texts))
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}: {len(bleu)} BLEU, {len(sent)} sentence-BLEU, {len(chrf)} chrF cases, "
          f"{len(tok)} tokenizations, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
