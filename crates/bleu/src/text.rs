//! Reading text the way sacreBLEU's command line does, and Python's notion of whitespace.

use std::io::Read;
use std::path::Path;

use rdrop_text::LineRules;

use crate::Error;

/// Python's `str.isspace()`: Unicode White_Space plus the four ASCII separators U+001C..U+001F.
///
/// sacreBLEU splits tokens with `str.split()` and strips lines with `str.rstrip()`, both of which
/// use this set; Rust's `char::is_whitespace` lacks the separators.
#[inline]
pub fn is_py_space(c: char) -> bool {
    if c.is_ascii() {
        matches!(c as u8, b'\t'..=b'\r' | 0x1c..=0x20)
    } else {
        c.is_whitespace()
    }
}

/// Python's `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.split()`: maximal runs of non-whitespace.
pub fn py_split(s: &str) -> PySplit<'_> {
    PySplit { s, pos: 0 }
}

/// Iterator returned by [`py_split`]; scans bytes, recognising the multi-byte whitespace characters
/// by their UTF-8 encodings, so no character is decoded.
pub struct PySplit<'a> {
    s: &'a str,
    pos: usize,
}

/// Length of the Python whitespace character starting at byte `i`, or 0.
#[inline]
pub(crate) fn space_len(b: &[u8], i: usize) -> usize {
    let c = b[i];
    if c < 0x80 {
        return usize::from(matches!(c, b'\t'..=b'\r' | 0x1c..=0x20));
    }
    let at = |k: usize| b.get(i + k).copied().unwrap_or(0);
    match c {
        // U+0085, U+00A0
        0xC2 if matches!(at(1), 0x85 | 0xA0) => 2,
        // U+1680
        0xE1 if at(1) == 0x9A && at(2) == 0x80 => 3,
        // U+2000..=U+200A, U+2028, U+2029, U+202F, U+205F
        0xE2 if (at(1) == 0x80 && matches!(at(2), 0x80..=0x8A | 0xA8 | 0xA9 | 0xAF))
            || (at(1) == 0x81 && at(2) == 0x9F) =>
        {
            3
        }
        // U+3000
        0xE3 if at(1) == 0x80 && at(2) == 0x80 => 3,
        _ => 0,
    }
}

impl<'a> Iterator for PySplit<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let b = self.s.as_bytes();
        let mut i = self.pos;
        loop {
            if i >= b.len() {
                self.pos = i;
                return None;
            }
            match space_len(b, i) {
                0 => break,
                n => i += n,
            }
        }
        let start = i;
        while i < b.len() && space_len(b, i) == 0 {
            i += 1;
        }
        self.pos = i;
        // Token bounds sit at the start of a whitespace character or the end: char boundaries.
        self.s.get(start..i)
    }
}

/// Python's `s.lower()` (full Unicode mapping, final sigma included), borrowing when nothing changes.
pub fn py_lower(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().all(|b| !b.is_ascii_uppercase() && b.is_ascii()) {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(s.to_lowercase())
    }
}

/// Splits raw bytes into UTF-8 lines on `\n` only, as Python's `open(..., newline="\n")` does:
/// a final newline does not start an extra line, `\r` stays in the line, a BOM stays a character.
/// `name` is used in error messages (a path, or `<stdin>`).
pub fn split_lines(bytes: &[u8], name: &str) -> Result<Vec<String>, Error> {
    Ok(rdrop_text::split_lines(bytes, name, LineRules::SacreBleu)?)
}

/// Reads a file as sacreBLEU's CLI reads references and `-i` inputs: lines split on `\n`, each
/// stripped of trailing whitespace (which also removes a `\r` from CRLF files).
pub fn read_lines(path: &Path) -> Result<Vec<String>, Error> {
    let mut lines = rdrop_text::read_lines(path, LineRules::SacreBleu)?;
    for l in &mut lines {
        let keep = py_rstrip(l).len();
        l.truncate(keep);
    }
    Ok(lines)
}

/// Reads tab-separated systems from standard input as sacreBLEU does without `-i`: universal
/// newlines, the field count fixed by the first line (an empty input is one empty line).
pub fn read_systems_from(mut input: impl Read, name: &str) -> Result<Vec<Vec<String>>, Error> {
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|source| rdrop_text::Error::Io {
            path: name.to_owned(),
            source,
        })?;
    // Python's universal newlines: \r\n and lone \r end lines too.
    let mut norm = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' {
            norm.push(b'\n');
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
        } else {
            norm.push(bytes[i]);
        }
        i += 1;
    }
    let lines = split_lines(&norm, name)?;
    let mut systems: Vec<Vec<String>> = Vec::new();
    if lines.is_empty() {
        return Ok(vec![vec![String::new()]]);
    }
    for (i, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = py_rstrip(line).split('\t').collect();
        if i == 0 {
            // sacreBLEU strips the first line as a whole but not its fields.
            systems = fields.iter().map(|f| vec![f.to_string()]).collect();
            continue;
        }
        if fields.len() != systems.len() {
            return Err(Error::FieldCount {
                path: name.to_owned(),
                line: i + 1,
                expected: systems.len(),
                found: fields.len(),
            });
        }
        for (sys, f) in systems.iter_mut().zip(fields) {
            sys.push(py_rstrip(f).to_owned());
        }
    }
    Ok(systems)
}

/// Splits each line of a reference file into `n` tab-separated references (sacreBLEU's `--num-refs`),
/// returning one stream per reference.
pub fn split_tabbed_refs(
    lines: &[String],
    n: usize,
    name: &str,
) -> Result<Vec<Vec<String>>, Error> {
    let mut streams = vec![Vec::with_capacity(lines.len()); n];
    for (i, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.splitn(n, '\t').collect();
        if fields.len() != n {
            return Err(Error::FieldCount {
                path: name.to_owned(),
                line: i + 1,
                expected: n,
                found: fields.len(),
            });
        }
        for (s, f) in streams.iter_mut().zip(fields) {
            s.push(f.to_owned());
        }
    }
    Ok(streams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_like_python_text_mode() {
        let l = split_lines(b"a\r\n\xef\xbb\xbfb\n\nc", "f").unwrap();
        assert_eq!(l, vec!["a\r", "\u{feff}b", "", "c"]);
        assert!(split_lines(b"", "f").unwrap().is_empty());
        assert_eq!(split_lines(b"\n", "f").unwrap(), vec![""]);
        let e = split_lines(b"ok\nbad\xff\n", "f.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.txt") && e.contains(":2"), "{e}");
    }

    #[test]
    fn byte_splitter_agrees_with_char_classification() {
        for cp in (0u32..0x3100).chain([0xfeff, 0x1_0000]) {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let s = format!("a{c}b");
            let n = py_split(&s).count();
            assert_eq!(n == 2, is_py_space(c), "U+{cp:04X}");
        }
    }

    #[test]
    fn python_whitespace() {
        assert_eq!(
            py_split("a\u{1c}b\u{3000}c\u{a0} d").collect::<Vec<_>>(),
            vec!["a", "b", "c", "d"]
        );
        assert_eq!(py_rstrip("x \u{2003}\r"), "x");
        // U+FEFF and U+200B are not whitespace for Python.
        assert_eq!(py_split("\u{feff}a\u{200b}").count(), 1);
    }

    #[test]
    fn stdin_systems() {
        let s = read_systems_from(&b"a b \tc\r\nd\te \n"[..], "<stdin>").unwrap();
        assert_eq!(
            s,
            vec![
                vec!["a b ".to_string(), "d".into()],
                vec!["c".to_string(), "e".into()]
            ]
        );
        assert!(read_systems_from(&b"a\tb\nc\n"[..], "<stdin>").is_err());
    }
}
