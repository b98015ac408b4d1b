//! Text as lines, read one way by every rdrop command: training corpora, `translate` input
//! (streamed), `score` pairs and `bleu` files; UTF-8 checked, a leading BOM and CRLF handled.
//!
//! Two rule sets: [`LineRules::Plain`] for everything rdrop reads as sentences, and
//! [`LineRules::SacreBleu`], which reproduces how sacreBLEU's command line opens files, because
//! BLEU must see the bytes sacreBLEU sees to give its scores.
//!
//! ```
//! use rdrop_text::{split_lines, LineRules};
//! let bytes = "\u{feff}Guten Tag\r\nDanke".as_bytes();
//! assert_eq!(split_lines(bytes, "de.txt", LineRules::Plain)?, ["Guten Tag", "Danke"]);
//! assert_eq!(
//!     split_lines(bytes, "de.txt", LineRules::SacreBleu)?,
//!     ["\u{feff}Guten Tag\r", "Danke"]
//! );
//! # Ok::<(), rdrop_text::InvalidUtf8>(())
//! ```

#![deny(missing_docs)]

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// How bytes become lines. Under both, lines end at `\n`, and a final `\n` ends the last line
/// instead of starting an empty one; an empty input has no lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LineRules {
    /// `\n` or `\r\n` ends a line; a byte-order mark at the start of the input is dropped, so a
    /// file saved by a Windows editor reads as the same sentences.
    #[default]
    Plain,
    /// Python's `open(path, newline="\n")`, as sacreBLEU reads: `\r` stays in the line and a BOM
    /// stays a character (sacreBLEU scores `\u{feff}The` as another word than `The`).
    SacreBleu,
}

/// A line that is not UTF-8. Its message starts `path:line:` as compilers' do, so editors jump
/// to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: invalid UTF-8 at line {line}, column {column}")]
pub struct InvalidUtf8 {
    /// The file, or a name such as `<stdin>`.
    pub path: String,
    /// 1-based line number.
    pub line: usize,
    /// 1-based byte offset of the first invalid byte in the line (a BOM's bytes included).
    pub column: usize,
}

/// Reading text failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file (or stream) could not be read; the OS error is the `source`, so printing the
    /// chain says it once.
    #[error("cannot read {path}")]
    Io {
        /// The file, or a name such as `<stdin>`.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A line is not UTF-8.
    #[error(transparent)]
    InvalidUtf8(#[from] InvalidUtf8),
}

const BOM: &str = "\u{feff}";

impl LineRules {
    /// Decodes line `index` (0-based) of `name`, given without its `\n`.
    fn decode(self, raw: &[u8], index: usize, name: &str) -> Result<String, InvalidUtf8> {
        let raw = match self {
            LineRules::Plain => raw.strip_suffix(b"\r").unwrap_or(raw),
            LineRules::SacreBleu => raw,
        };
        let text = std::str::from_utf8(raw).map_err(|e| InvalidUtf8 {
            path: name.to_owned(),
            line: index + 1,
            column: e.valid_up_to() + 1,
        })?;
        // Checked before the mark is dropped, so a column counts the bytes an editor shows.
        let text = match self {
            LineRules::Plain if index == 0 => text.strip_prefix(BOM).unwrap_or(text),
            _ => text,
        };
        Ok(text.to_owned())
    }
}

/// Splits a whole input into lines; `name` (a path, or `<stdin>`) goes into errors.
pub fn split_lines(bytes: &[u8], name: &str, rules: LineRules) -> Result<Vec<String>, InvalidUtf8> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, raw)| rules.decode(raw, i, name))
        .collect()
}

/// Reads a file into lines.
pub fn read_lines(path: &Path, rules: LineRules) -> Result<Vec<String>, Error> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: name.clone(),
        source,
    })?;
    Ok(split_lines(&bytes, &name, rules)?)
}

/// Lines of a stream as they arrive (standard input while someone types, a pipe, a huge file),
/// with the rules and errors of [`split_lines`]. A line that is not UTF-8 is an error item and
/// reading goes on after it; a read error is the last item.
pub struct Lines<R> {
    input: BufReader<R>,
    name: String,
    rules: LineRules,
    index: usize,
    buf: Vec<u8>,
    done: bool,
}

impl<R: Read> Lines<R> {
    /// Lines of `input`; `name` (a path, or `<stdin>`) goes into errors.
    pub fn new(input: R, name: impl Into<String>, rules: LineRules) -> Self {
        Lines {
            input: BufReader::with_capacity(1 << 16, input),
            name: name.into(),
            rules,
            index: 0,
            buf: Vec::new(),
            done: false,
        }
    }
}

impl<R: Read> Iterator for Lines<R> {
    type Item = Result<String, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.buf.clear();
        match self.input.read_until(b'\n', &mut self.buf) {
            Ok(0) => {
                // A terminal gives more after an end of input: stop at the first one.
                self.done = true;
                None
            }
            Ok(_) => {
                let raw = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
                let line = self.rules.decode(raw, self.index, &self.name);
                self.index += 1;
                Some(line.map_err(Error::from))
            }
            Err(source) => {
                self.done = true;
                Some(Err(Error::Io {
                    path: self.name.clone(),
                    source,
                }))
            }
        }
    }
}

impl<R: Read> std::iter::FusedIterator for Lines<R> {}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: LineRules = LineRules::Plain;
    const SACRE: LineRules = LineRules::SacreBleu;

    /// Both readers, which must agree on every input.
    fn both(bytes: &[u8], rules: LineRules) -> Result<Vec<String>, InvalidUtf8> {
        let whole = split_lines(bytes, "f.txt", rules);
        let streamed: Result<Vec<String>, Error> = Lines::new(bytes, "f.txt", rules).collect();
        let streamed = streamed.map_err(|e| match e {
            Error::InvalidUtf8(e) => e,
            Error::Io { .. } => panic!("a byte slice cannot fail to read"),
        });
        assert_eq!(whole, streamed, "{:?}", String::from_utf8_lossy(bytes));
        whole
    }

    #[test]
    fn bom_is_dropped_at_the_start_only() {
        assert_eq!(both(b"\xef\xbb\xbfa\nb\n", PLAIN).unwrap(), ["a", "b"]);
        // Elsewhere it is text (a zero-width no-break space).
        assert_eq!(
            both(b"a\n\xef\xbb\xbfb\n", PLAIN).unwrap(),
            ["a", "\u{feff}b"]
        );
        assert_eq!(both(b"\xef\xbb\xbf", PLAIN).unwrap(), [""]);
        assert_eq!(
            both(b"\xef\xbb\xbfa\n", SACRE).unwrap(),
            ["\u{feff}a"],
            "sacreBLEU keeps it"
        );
    }

    #[test]
    fn crlf_ends_a_line_under_plain_rules_only() {
        assert_eq!(both(b"a\r\nb\r\n", PLAIN).unwrap(), ["a", "b"]);
        assert_eq!(both(b"a\r\nb\r\n", SACRE).unwrap(), ["a\r", "b\r"]);
        // One `\r` belongs to the line ending; a lone `\r` is no line break.
        assert_eq!(both(b"a\r\r\nb\rc", PLAIN).unwrap(), ["a\r", "b\rc"]);
        assert_eq!(both(b"a\r", PLAIN).unwrap(), ["a"]);
    }

    #[test]
    fn invalid_utf8_names_file_line_and_column() {
        for rules in [PLAIN, SACRE] {
            let e = both(b"ok\nschl\xe4cht\r\n", rules).unwrap_err();
            assert_eq!(
                e,
                InvalidUtf8 {
                    path: "f.txt".into(),
                    line: 2,
                    column: 5
                }
            );
            assert_eq!(e.to_string(), "f.txt:2: invalid UTF-8 at line 2, column 5");
        }
        // A truncated character at the end of a line, and a BOM's bytes counted in the column.
        assert_eq!(both(b"ab\xc3\n", PLAIN).unwrap_err().column, 3);
        assert_eq!(both(b"\xef\xbb\xbfa\xff", PLAIN).unwrap_err().column, 5);
    }

    #[test]
    fn empty_input_and_empty_lines() {
        for rules in [PLAIN, SACRE] {
            assert!(both(b"", rules).unwrap().is_empty());
            assert_eq!(both(b"\n", rules).unwrap(), [""]);
            assert_eq!(both(b"\n\n", rules).unwrap(), ["", ""]);
        }
        assert_eq!(both(b"\r\n", PLAIN).unwrap(), [""]);
    }

    #[test]
    fn missing_final_newline_changes_nothing() {
        for rules in [PLAIN, SACRE] {
            assert_eq!(
                both(b"a\nb", rules).unwrap(),
                both(b"a\nb\n", rules).unwrap()
            );
        }
        assert_eq!(both(b"a\r\nb", PLAIN).unwrap(), ["a", "b"]);
    }

    #[test]
    fn streaming_goes_on_after_a_bad_line_and_stops_at_a_read_error() {
        let items: Vec<_> = Lines::new(&b"a\n\xff\nc"[..], "<stdin>", PLAIN).collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_deref().unwrap(), "a");
        assert!(items[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .starts_with("<stdin>:2: invalid UTF-8"));
        assert_eq!(items[2].as_deref().unwrap(), "c");

        struct Broken(bool);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    return Err(io::Error::other("disk on fire"));
                }
                buf[..2].copy_from_slice(b"a\n");
                Ok(2)
            }
        }
        let mut lines = Lines::new(Broken(false), "in.txt", PLAIN);
        assert_eq!(lines.next().unwrap().unwrap(), "a");
        let e = lines.next().unwrap().unwrap_err();
        assert_eq!(e.to_string(), "cannot read in.txt");
        assert!(lines.next().is_none());
    }

    #[test]
    fn files_are_named_in_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("de.txt");
        std::fs::write(&p, b"\xef\xbb\xbfeins\r\nzwei").unwrap();
        assert_eq!(read_lines(&p, PLAIN).unwrap(), ["eins", "zwei"]);
        let missing = d.path().join("missing.txt");
        let e = read_lines(&missing, PLAIN).unwrap_err();
        assert!(matches!(e, Error::Io { .. }));
        assert!(e.to_string().contains("missing.txt"), "{e}");
        std::fs::write(&p, b"gut\nschl\xffecht\n").unwrap();
        let e = read_lines(&p, PLAIN).unwrap_err().to_string();
        assert!(
            e.contains("de.txt:2: invalid UTF-8") && e.contains("column 5"),
            "{e}"
        );
    }
}
