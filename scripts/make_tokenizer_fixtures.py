#!/usr/bin/env python3
"""Writes the reference fixtures for rdrop's opus-mt tokenizer (crates/seq2seq/src/tokenizer.rs).

For each fixture it trains a small SentencePiece unigram model (sentencepiece from PyPI), writes an
opus-mt style directory (source.spm, target.spm, vocab.json [, target_vocab.json],
tokenizer_config.json) and records what transformers' slow `MarianTokenizer` makes of it in
cases.json:

  encode: [{"text": ..., "source": [ids], "target": [ids]}]   # `tok(text)` / `tok(text_target=text)`
  decode: [{"ids": [ids], "text": ...}]                       # `tok.batch_decode(..., skip_special_tokens=True)`

The fixtures vary what matters for the conversion: nmt_nfkc / nmt_nfkc_cf / identity normalisation,
remove_extra_whitespaces and add_dummy_prefix on and off, byte fallback, user-defined symbols, spm
control pieces, pieces missing from vocab.json (they must map to <unk>), separate source/target spm
with a joint vocab (opus-mt-en-de style), separate vocabularies, and `>>xx<<` language tokens.

Training text is synthetic (deterministic) or read from ../shared/data/multi30k/raw at generation
time; only the models, vocabularies and the strings below (no corpus lines) are written.

    PY=$(bash scripts/py-env.sh)/bin/python
    $PY scripts/make_tokenizer_fixtures.py                   # -> tests/fixtures/tokenizers/
    $PY scripts/make_tokenizer_fixtures.py --corpus-cases N  # also encode N corpus lines per fixture
        into $TMPDIR/rdrop-tokenizer-corpus-cases/ (not committed; the Rust test reads it when
        RDROP_TOKENIZER_EXTRA_FIXTURES points there)
"""
import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import sentencepiece as spm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "multi30k" / "raw"
OUT = ROOT / "tests" / "fixtures" / "tokenizers"

# Strings that have tripped SentencePiece ports before: whitespace runs and kinds, NFKC folds,
# combining marks, scripts the models never saw, emoji sequences, special-token text, language codes.
TRICKY = [
    "",
    " ",
    "   ",
    "\t",
    "Hello world.",
    "Two penguins argue about the price of umbrellas.",
    "Eine Frau mit rotem Schirm wartet am Bahnsteig, während es regnet.",
    "  leading spaces",
    "trailing spaces   ",
    "multiple   inner    spaces",
    "tab\tseparated\twords",
    "line\nbreak and\r\ncarriage return",
    "no\u00a0break\u00a0space",
    "ideographic\u3000space",
    "thin\u2009space and em\u2003space",
    "zero\u200bwidth\u200djoiner",
    "\ufeffbyte order mark",
    "Ünïcödé àccénts ÄÖÜ äöüß",
    "e\u0301 combining acute, a\u0308 combining umlaut",
    "ﬁ ﬂ ﬀ ligatures ﬁ\u0301 --- -- - A\u0301",
    "½ ¼ ² ³ ™ ℃ №",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "“curly quotes” ‘single’ — em dash – en dash … ellipsis",
    "« guillemets » ‹ single › „German“",
    "1234567890 3.14159 1,000,000 2024-05-01 10:30",
    "中文字符测试",
    "日本語のテキストです。",
    "한국어 텍스트",
    "Ωμέγα ελληνικά γράμματα",
    "Привет, мир!",
    "עברית",
    "العربية",
    "emoji 😀🎉 thumbs 👍🏽 family 👨‍👩‍👧 flag 🇩🇪",
    "unknown ☃☄♞⚗ symbols",
    "Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichen",
    "supercalifragilisticexpialidocious" * 4,
    "a" * 120,
    "x",
    ".",
    "!!!???...",
    "(parentheses) [brackets] {braces} <angles>",
    "email@example.com http://example.org/path?q=1&r=2#frag",
    "'single' \"double\" `back`",
    "MiXeD CaSe WoRdS",
    "</s>",
    "a</s>b",
    "<unk> and <pad> as text",
    "end with eos </s>",
    "<s> bos text",
    "▁ literal lower block ▁▁",
    "trailing block▁",
    "control \x01\x02\x7f chars",
    "\u0085next line",
    ">>de<< Hallo Welt",
    ">>fr<<Bonjour le monde",
    ">>xx<< unknown code",
    ">> not a code",
    "text >>de<< in the middle",
    ">>de<<",
    ">>de<<</s>",
    " >>de<< leading space",
    "@@ <br> user symbols",
]


def synth_words(n_words, seed):
    """Deterministic pseudo-words built from syllables (as in make_tiny_marian.py)."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
              "br", "cr", "dr", "fr", "gr", "pr", "tr", "bl", "cl", "fl", "st", "sp", "sch", "th"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou", "ie", "y"]
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck", "rt", "nt"]
    words, seen = [], set()
    while len(words) < n_words:
        w = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                    for _ in range(rng.choice([1, 1, 2, 2, 3])))
        if w not in seen and len(w) > 1:
            seen.add(w)
            words.append(w)
    return words


def synth_lines(n, seed):
    rng = random.Random(seed)
    words = synth_words(3000, seed)
    weights = [1.0 / (i + 1) for i in range(len(words))]
    out = []
    for _ in range(n):
        k = rng.randint(3, 15)
        line = " ".join(rng.choices(words, weights, k=k)).capitalize()
        if rng.random() < 0.3:
            line += rng.choice([",", ";"]) + " " + str(rng.randint(0, 999))
        out.append(line + rng.choice([".", ".", "?", "!"]))
    return out


def corpus_lines(lang, n):
    path = DATA / f"train.{lang}"
    if not path.exists():
        sys.exit(f"{path} is missing: the multi30k fixtures are trained on it")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(n), f)]


def train_spm(lines, vocab_size, **kw):
    """Trains a unigram model in memory and returns its serialized ModelProto."""
    buf = io.BytesIO()
    opts = dict(model_type="unigram", vocab_size=vocab_size, character_coverage=0.9995,
                num_threads=1, minloglevel=2, hard_vocab_limit=False, seed_sentencepiece_size=50000)
    opts.update(kw)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, **opts)
    return buf.getvalue()


def custom_rules():
    """A small normalisation table (the full nmt_nfkc one is ~240 KB per model): multi-character
    sources, expansions, deletions and whitespace mappings, so the longest-match logic is tested."""
    rules = [
        ("41 301", "C1"),      # A + combining acute -> Á
        ("65 301", "E9"),      # e + combining acute -> é
        ("FB01", "66 69"),     # ﬁ -> fi
        ("FB01 301", "66 ED"), # ﬁ + combining acute -> fí (a longer rule over the one above)
        ("2D 2D", "2014"),     # -- -> — (no rule for a single -)
        ("FB00", "66 66"),     # ﬀ -> ff
        ("BD", "31 2044 32"),  # ½ -> 1⁄2
        ("A0", "20"),          # no-break space -> space
        ("9", "20"),           # tab -> space
        ("3000", "20"),        # ideographic space -> space
        ("2009", "20 20"),     # thin space -> two spaces
        ("FF21", "41"),        # fullwidth A -> A
        ("201C", "22"),        # “ -> "
        ("201D", "22"),        # ” -> "
        ("2026", "2E 2E 2E"),  # … -> ...
        ("200B", "20"),        # zero width space -> space
    ]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "rdrop_spm_rules.tsv"
    path.write_text("".join(f"{s}\t{t}\n" for s, t in rules))
    return str(path)


def pieces_of(model_bytes):
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def marian_vocab(piece_lists, extra=(), drop_every=0):
    """opus-mt layout: </s>=0, <unk>=1, [extra], the spm pieces (deduplicated, spm's own control
    pieces left out), <pad> last. With drop_every=k every k-th piece is left out so that some
    pieces the spm model produces must map to <unk>."""
    vocab = {"</s>": 0, "<unk>": 1}
    for e in extra:
        vocab[e] = len(vocab)
    n = 0
    for pieces in piece_lists:
        for p in pieces:
            if p in vocab or p in ("<s>", "<pad>"):
                continue
            n += 1
            if drop_every and n % drop_every == 0:
                continue
            vocab[p] = len(vocab)
    vocab["<pad>"] = len(vocab)
    return vocab


def write_dir(out, source, target, vocab, target_vocab=None, extra_config=None):
    out.mkdir(parents=True, exist_ok=True)
    (out / "source.spm").write_bytes(source)
    (out / "target.spm").write_bytes(target)
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=0)
    if target_vocab is not None:
        with open(out / "target_vocab.json", "w", encoding="utf-8") as f:
            json.dump(target_vocab, f, ensure_ascii=False, indent=0)
    cfg = {"tokenizer_class": "MarianTokenizer", "source_lang": "src", "target_lang": "tgt",
           "unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>", "model_max_length": 512,
           "separate_vocabs": target_vocab is not None}
    cfg.update(extra_config or {})
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)


def fuzz_strings(rng, pieces, n):
    """Random strings mixing vocabulary pieces, whitespace runs, punctuation and foreign scripts."""
    alphabet = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZäöüßéèêàçñ0123456789"
                ".,;:!?'\"()-–—…«»“”„ \t\u00a0\u3000αβγδЖжЯя中文日本한국😀👍🏽ﬁ½Ｆ\u0301\u200b")
    words = [p.replace("▁", "") for p in pieces if len(p) > 1 and not p.startswith("<")]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.6 and words:
                parts.append(rng.choice(words))
            elif r < 0.85:
                parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
            else:
                parts.append(rng.choice(["", " ", "  ", "\t", " . ", "▁", "</s>", ">>de<<"]))
            parts.append(rng.choice([" ", " ", " ", "", "  "]))
        out.append("".join(parts))
    return out


def reference_cases(out, texts, rng, n_random_decode=60):
    from transformers import MarianTokenizer

    tok = MarianTokenizer.from_pretrained(str(out))
    enc = []
    for text in texts:
        src = tok(text).input_ids
        tgt = tok(text_target=text).input_ids
        enc.append({"text": text, "source": src, "target": tgt})
    # Decoding works on target ids: round trips of every case plus random id sequences that mix
    # special tokens, language codes, fillers and ordinary pieces.
    tgt_vocab_size = len(tok.target_encoder) if tok.separate_vocabs else len(tok.encoder)
    seqs = [c["target"] for c in enc]
    for _ in range(n_random_decode):
        seqs.append([rng.randrange(tgt_vocab_size) for _ in range(rng.randint(0, 25))])
    specials = sorted(set(tok.all_special_ids))
    for s in specials:
        seqs.append([s, 5, s, 6, s])
    texts_out = tok.batch_decode(seqs, skip_special_tokens=True)
    dec = [{"ids": ids, "text": t} for ids, t in zip(seqs, texts_out)]
    return enc, dec


def build_fixtures(want):
    fixtures = {}

    def fixture(name):
        def deco(fn):
            fixtures[name] = fn
            return fn
        return deco

    @fixture("synth_joint")
    def _():
        # make_tiny_marian.py layout: spm eos=0, unk=1, no bos/pad; synthetic ASCII text, so every
        # other script is unknown; some pieces are missing from vocab.json; a small custom
        # normalisation table with multi-character rules (longest match wins in SentencePiece).
        m = train_spm(synth_lines(4000, 7), 400, eos_id=0, unk_id=1, bos_id=-1, pad_id=-1,
                      character_coverage=1.0, normalization_rule_tsv=custom_rules())
        return m, m, marian_vocab([pieces_of(m)], drop_every=17), None, None

    @fixture("m30k_joint")
    def _():
        # spm defaults (<unk>=0, <s>=1 control, </s>=2), nmt_nfkc, user-defined symbols, de+en text.
        lines = corpus_lines("de", 3000) + corpus_lines("en", 3000)
        m = train_spm(lines, 1000, user_defined_symbols=["@@", "<br>"])
        return m, m, marian_vocab([pieces_of(m)]), None, None

    @fixture("m30k_sep_spm")
    def _():
        # opus-mt-en-de style: different source/target spm, one joint vocab.json.
        src = train_spm(corpus_lines("en", 3000), 500, normalization_rule_name="nmt_nfkc_cf")
        tgt = train_spm(corpus_lines("de", 3000), 600, normalization_rule_tsv=custom_rules())
        return src, tgt, marian_vocab([pieces_of(src), pieces_of(tgt)]), None, None

    @fixture("m30k_sep_vocab")
    def _():
        # separate_vocabs: vocab.json for the source, target_vocab.json for the target; identity
        # normalisation with byte fallback on the source, no dummy prefix on the target.
        src = train_spm(corpus_lines("en", 3000), 500, normalization_rule_name="identity",
                        byte_fallback=True)
        tgt = train_spm(corpus_lines("de", 3000), 500, add_dummy_prefix=False,
                        normalization_rule_name="identity")
        return src, tgt, marian_vocab([pieces_of(src)]), marian_vocab([pieces_of(tgt)]), None

    @fixture("multi_lang")
    def _():
        # Multilingual target side: `>>xx<<` codes in vocab.json (not in the spm); whitespace kept.
        lines = corpus_lines("de", 1500) + corpus_lines("fr", 1500) + corpus_lines("en", 1500)
        m = train_spm(lines, 800, remove_extra_whitespaces=False, normalization_rule_name="identity")
        vocab = marian_vocab([pieces_of(m)], extra=[">>de<<", ">>fr<<", ">>en<<"])
        return m, m, vocab, None, None

    return {k: v for k, v in fixtures.items() if not want or k in want}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", nargs="*", default=[])
    ap.add_argument("--n-fuzz", type=int, default=120)
    ap.add_argument("--corpus-cases", type=int, default=0,
                    help="also write N corpus lines per fixture (de, en, fr, cs) to --corpus-out")
    ap.add_argument("--corpus-out", type=Path,
                    default=Path(os.environ.get("TMPDIR", "/tmp")) / "rdrop-tokenizer-corpus-cases")
    a = ap.parse_args()

    for name, make in build_fixtures(a.only).items():
        source, target, vocab, target_vocab, extra_cfg = make()
        with tempfile.TemporaryDirectory() as tmp:
            full = Path(tmp)
            write_dir(full, source, target, vocab, target_vocab, extra_cfg)
            rng = random.Random(name)
            texts = TRICKY + fuzz_strings(rng, pieces_of(source) + pieces_of(target), a.n_fuzz)
            enc, dec = reference_cases(full, texts, rng)
            with open(full / "cases.json", "w", encoding="utf-8") as f:
                json.dump({"encode": enc, "decode": dec}, f, ensure_ascii=False, separators=(",", ":"))
            out = a.out / name
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(full, out)
            if source == target:
                # Keeps the fixtures small: the test recreates target.spm as a copy of source.spm.
                (out / "target.spm").unlink()
            size = sum(p.stat().st_size for p in out.iterdir())
            print(f"{name}: {len(enc)} encode cases, {len(dec)} decode cases, {size / 1024:.0f} KiB")
            if a.corpus_cases:
                big = a.corpus_out / name
                if big.exists():
                    shutil.rmtree(big)
                shutil.copytree(full, big)
                lines = []
                for lang in ("de", "en", "fr", "cs"):
                    lines += corpus_lines(lang, 29000)[-a.corpus_cases:]
                enc, dec = reference_cases(big, lines, rng, n_random_decode=0)
                with open(big / "cases.json", "w", encoding="utf-8") as f:
                    json.dump({"encode": enc, "decode": dec}, f, ensure_ascii=False)
                print(f"  corpus cases: {len(enc)} -> {big}")


if __name__ == "__main__":
    main()
