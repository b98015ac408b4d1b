//! sacreBLEU's BLEU tokenizers: `13a` (mteval-v13a, the default), `intl` (mteval-v14), `char`, `zh`, `none`.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use regex::Regex;

use crate::text::{py_split, py_strip};
use crate::Error;

/// A BLEU tokenizer, named as in sacreBLEU's `--tokenize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tokenizer {
    /// `13a`: mteval-v13a.pl's tokenization, sacreBLEU's default.
    #[default]
    Thirteen,
    /// `intl`: mteval-v14.pl's international tokenization on Unicode punctuation and symbols.
    Intl,
    /// `char`: every non-space character is a token.
    Char,
    /// `zh`: Chinese characters split apart, the rest tokenized like `13a`.
    Zh,
    /// `none`: whitespace splitting only.
    None,
}

impl Tokenizer {
    /// The name used in signatures and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::Thirteen => "13a",
            Tokenizer::Intl => "intl",
            Tokenizer::Char => "char",
            Tokenizer::Zh => "zh",
            Tokenizer::None => "none",
        }
    }

    /// Tokenizes `line` into `out` (cleared first) as space-separated tokens.
    pub fn tokenize_into(self, line: &str, out: &mut String) {
        out.clear();
        match self {
            Tokenizer::Thirteen => tokenize_13a(line, out),
            Tokenizer::Intl => tokenize_intl(line, out),
            Tokenizer::Char => {
                for c in line.chars().filter(|c| !crate::text::is_py_space(*c)) {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push(c);
                }
            }
            Tokenizer::Zh => tokenize_zh(line, out),
            Tokenizer::None => out.push_str(line),
        }
    }

    /// Tokenizes `line` and returns the space-separated tokens.
    pub fn tokenize(self, line: &str) -> String {
        let mut out = String::new();
        self.tokenize_into(line, &mut out);
        out
    }
}

impl fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tokenizer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "13a" => Tokenizer::Thirteen,
            "intl" => Tokenizer::Intl,
            "char" => Tokenizer::Char,
            "zh" => Tokenizer::Zh,
            "none" => Tokenizer::None,
            _ => return Err(Error::UnknownTokenizer(s.to_owned())),
        })
    }
}

fn tokenize_13a(line: &str, out: &mut String) {
    use std::borrow::Cow;
    let mut s: Cow<'_, str> = Cow::Borrowed(line);
    if s.contains("<skipped>") {
        s = Cow::Owned(s.replace("<skipped>", ""));
    }
    if s.contains('\n') {
        s = Cow::Owned(s.replace("-\n", "").replace('\n', " "));
    }
    if s.contains('&') {
        // Sequential, as in sacreBLEU: "&amp;lt;" ends up as "<".
        s = Cow::Owned(
            s.replace("&quot;", "\"")
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">"),
        );
    }
    let mut buf = Vec::with_capacity(s.len() * 2 + 2);
    buf.push(b' ');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b' ');
    post_tokenize(buf, out);
}

/// `[\{-\~\[-\` -\&\(-\+\:-\@\/]` of sacreBLEU's `TokenizerRegexp`: ASCII punctuation except
/// `'`, `,`, `-` and `.`, plus the space.
#[inline]
fn is_13a_sep(b: u8) -> bool {
    matches!(b, b'{'..=b'~' | b'['..=b'`' | b' '..=b'&' | b'('..=b'+' | b':'..=b'@' | b'/')
}

/// sacreBLEU's `TokenizerRegexp`, shared by `13a` and `zh`: four regex substitutions applied in turn,
/// then whitespace normalisation.
///
/// Every pattern is ASCII, so each pass runs over bytes, reproducing the regex engine's left-to-right,
/// non-overlapping matching (a match consumes its two characters; the next search starts after them).
/// A pattern's `[^0-9]` may meet a byte of a multi-byte character, which inserts the space at the same
/// character boundary as matching the whole character would. Passes 2-4 only look at the rare `.`, `,`
/// and `-` and copy everything in between in bulk.
fn post_tokenize(mut a: Vec<u8>, out: &mut String) {
    let mut b: Vec<u8> = Vec::with_capacity(a.len() * 2);
    // (1) `([\{-\~\[-\` -\&\(-\+\:-\@\/])` -> ` \1 `
    let mut copied = 0;
    for (i, &c) in a.iter().enumerate() {
        if is_13a_sep(c) {
            b.extend_from_slice(&a[copied..i]);
            b.extend_from_slice(&[b' ', c, b' ']);
            copied = i + 1;
        }
    }
    b.extend_from_slice(&a[copied..]);
    // (2) `([^0-9])([\.,])` -> `\1 \2 `
    a.clear();
    let (mut copied, mut last_end) = (0, 0);
    for j in memchr2_iter(b'.', b',', &b) {
        if j > last_end && !b[j - 1].is_ascii_digit() {
            a.extend_from_slice(&b[copied..j]);
            a.extend_from_slice(&[b' ', b[j], b' ']);
            copied = j + 1;
            last_end = j + 1;
        }
    }
    a.extend_from_slice(&b[copied..]);
    // (3) `([\.,])([^0-9])` -> ` \1 \2`
    b.clear();
    let (mut copied, mut last_end) = (0, 0);
    for j in memchr2_iter(b'.', b',', &a) {
        if j >= last_end && j + 1 < a.len() && !a[j + 1].is_ascii_digit() {
            b.extend_from_slice(&a[copied..j]);
            b.extend_from_slice(&[b' ', a[j], b' ', a[j + 1]]);
            copied = j + 2;
            last_end = j + 2;
        }
    }
    b.extend_from_slice(&a[copied..]);
    // (4) `([0-9])(-)` -> `\1 \2 `
    a.clear();
    let mut copied = 0;
    for j in b
        .iter()
        .enumerate()
        .filter(|(_, &c)| c == b'-')
        .map(|(j, _)| j)
    {
        // A digit before `-` can never have been consumed by the previous match (which ends in `-`).
        if j >= 1 && j > copied && b[j - 1].is_ascii_digit() {
            a.extend_from_slice(&b[copied..j]);
            a.extend_from_slice(b" - ");
            copied = j + 1;
        }
    }
    a.extend_from_slice(&b[copied..]);
    // ' '.join(line.split()) on bytes: whole whitespace characters are dropped, all other bytes
    // copied, so the result is UTF-8 whenever the input was (spaces went in at character boundaries).
    let mut v = std::mem::take(out).into_bytes();
    v.clear();
    let mut i = 0;
    let mut gap = false;
    while i < a.len() {
        match crate::text::space_len(&a, i) {
            0 => {
                if gap && !v.is_empty() {
                    v.push(b' ');
                }
                gap = false;
                v.push(a[i]);
                i += 1;
            }
            n => {
                gap = true;
                i += n;
            }
        }
    }
    *out =
        String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
}

/// Positions of `x` or `y` in `hay`, in order.
fn memchr2_iter(x: u8, y: u8, hay: &[u8]) -> impl Iterator<Item = usize> + '_ {
    hay.iter()
        .enumerate()
        .filter(move |(_, &c)| c == x || c == y)
        .map(|(i, _)| i)
}

/// Tokens joined by single spaces.
fn join_strs<'a>(tokens: impl Iterator<Item = &'a str>, out: &mut String) {
    for (i, t) in tokens.enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(t);
    }
}

fn intl_regexes() -> &'static [(Regex, &'static str); 3] {
    static RE: OnceLock<[(Regex, &'static str); 3]> = OnceLock::new();
    RE.get_or_init(|| {
        // Fixed patterns: compiling cannot fail.
        let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("built-in pattern {p}: {e}"));
        [
            // Punctuation preceded by a non-digit.
            (re(r"(\P{N})(\p{P})"), "${1} ${2} "),
            // Punctuation followed by a non-digit.
            (re(r"(\p{P})(\P{N})"), " ${1} ${2}"),
            // Symbols.
            (re(r"(\p{S})"), " ${1} "),
        ]
    })
}

fn tokenize_intl(line: &str, out: &mut String) {
    let mut s = std::borrow::Cow::Borrowed(line);
    for (re, rep) in intl_regexes() {
        if let std::borrow::Cow::Owned(o) = re.replace_all(&s, *rep) {
            s = std::borrow::Cow::Owned(o);
        }
    }
    join_strs(py_split(&s), out);
}

/// sacreBLEU's `_UCODE_RANGES` for `zh`, compared as Python strings. Two ranges are written there with
/// five hex digits after `\u` (`'\u20000'`, `'\u2f800'`), which Python reads as a 4-digit escape plus a
/// digit; as string bounds they make U+2001..=U+2A6D and U+2F81..=U+2FA1 count as Chinese (general
/// punctuation such as `–` and `’` included). The scores sacreBLEU reports depend on that, so it is kept.
const ZH_RANGES: &[(u32, u32)] = &[
    (0x3400, 0x4db5),
    (0x4e00, 0x9fa5),
    (0x9fa6, 0x9fbb),
    (0xf900, 0xfa2d),
    (0xfa30, 0xfa6a),
    (0xfa70, 0xfad9),
    (0x2001, 0x2a6d),
    (0x2f81, 0x2fa1),
    (0xff00, 0xffef),
    (0x2e80, 0x2eff),
    (0x3000, 0x303f),
    (0x31c0, 0x31ef),
    (0x2f00, 0x2fdf),
    (0x2ff0, 0x2fff),
    (0x3100, 0x312f),
    (0x31a0, 0x31bf),
    (0xfe10, 0xfe1f),
    (0xfe30, 0xfe4f),
    (0x2600, 0x26ff),
    (0x2700, 0x27bf),
    (0x3200, 0x32ff),
    (0x3300, 0x33ff),
];

/// Whether sacreBLEU's `zh` tokenizer puts spaces around `c`.
pub fn is_zh_char(c: char) -> bool {
    let c = c as u32;
    ZH_RANGES.iter().any(|&(lo, hi)| lo <= c && c <= hi)
}

fn tokenize_zh(line: &str, out: &mut String) {
    let line = py_strip(line);
    let mut buf = Vec::with_capacity(line.len() * 2);
    let mut tmp = [0u8; 4];
    for c in line.chars() {
        if is_zh_char(c) {
            buf.push(b' ');
            buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            buf.push(b' ');
        } else {
            buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
        }
    }
    post_tokenize(buf, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirteen_a_regex_order_matters() {
        // "a.." : pass 2 consumes "a." so the second dot stays glued until pass 3.
        let t = Tokenizer::Thirteen;
        assert_eq!(t.tokenize("Hello, world."), "Hello , world .");
        assert_eq!(t.tokenize("1,000.5 and 3-4"), "1,000.5 and 3 - 4");
        assert_eq!(t.tokenize("&amp;lt;"), "<");
    }
}
