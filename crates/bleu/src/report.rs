//! sacreBLEU's output formats: score lines, JSON objects, the several-system and paired-test tables.
//! Only text is assembled here; the scores come from [`crate::evaluation`].

use serde_json::Value;

use crate::evaluation::{Column, PairedMethod};
use crate::metric::Report;
use crate::significance::PairedResult;

/// A JSON object that keeps its keys in insertion order, as Python's dicts do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Object(pub Vec<(String, Node)>);

/// A value inside an [`Object`]: plain JSON, or a nested ordered object.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// Any JSON value (objects inside it print in `serde_json::Map` order).
    Value(Value),
    /// A nested ordered object.
    Object(Object),
}

impl Object {
    /// Appends or replaces `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.set(key.into(), Node::Value(value.into()));
    }

    /// Appends or replaces `key` with a nested ordered object.
    pub fn insert_object(&mut self, key: impl Into<String>, value: Object) {
        self.set(key.into(), Node::Object(value));
    }

    fn set(&mut self, key: String, node: Node) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = node,
            None => self.0.push((key, node)),
        }
    }
}

/// Writes a list of ordered objects as `json.dumps(list, indent=indent, ensure_ascii=...)`.
pub fn python_json_objects(list: &[Object], indent: usize, ensure_ascii: bool) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|o| {
            let body = python_json_object(o, indent, ensure_ascii);
            // Re-indent the object one level deeper inside the list.
            body.replace('\n', &format!("\n{}", " ".repeat(indent)))
        })
        .collect();
    if items.is_empty() {
        return "[]".into();
    }
    let pad = " ".repeat(indent);
    format!("[\n{pad}{}\n]", items.join(&format!(",\n{pad}")))
}

/// Writes one ordered object as `json.dumps(obj, indent=indent, ensure_ascii=...)`.
pub fn python_json_object(o: &Object, indent: usize, ensure_ascii: bool) -> String {
    let mut out = String::new();
    write_object(o, indent, ensure_ascii, 0, &mut out);
    out
}

fn write_object(o: &Object, indent: usize, ea: bool, depth: usize, out: &mut String) {
    if o.0.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push('{');
    for (i, (k, v)) in o.0.iter().enumerate() {
        out.push_str(if i > 0 { ",\n" } else { "\n" });
        out.push_str(&" ".repeat(indent * (depth + 1)));
        write_str(k, ea, out);
        out.push_str(": ");
        match v {
            Node::Value(v) => write_json(v, indent, ea, depth + 1, out),
            Node::Object(o) => write_object(o, indent, ea, depth + 1, out),
        }
    }
    out.push('\n');
    out.push_str(&" ".repeat(indent * depth));
    out.push('}');
}

/// Writes `v` as Python's `json.dumps(v, indent=indent, ensure_ascii=ensure_ascii)` does
/// (objects in key order of `serde_json::Map`; use [`Object`] where order matters).
pub fn python_json(v: &Value, indent: usize, ensure_ascii: bool) -> String {
    let mut out = String::new();
    write_json(v, indent, ensure_ascii, 0, &mut out);
    out
}

fn write_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(v: &Value, indent: usize, ea: bool, depth: usize, out: &mut String) {
    let pad = |d: usize| " ".repeat(indent * d);
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => out.push_str(&python_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_str(s, ea, out),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                out.push_str(if i > 0 { ",\n" } else { "\n" });
                out.push_str(&pad(depth + 1));
                write_json(x, indent, ea, depth + 1, out);
            }
            out.push('\n');
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                out.push_str(if i > 0 { ",\n" } else { "\n" });
                out.push_str(&pad(depth + 1));
                write_str(k, ea, out);
                out.push_str(": ");
                write_json(x, indent, ea, depth + 1, out);
            }
            out.push('\n');
            out.push_str(&pad(depth));
            out.push('}');
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, `.0` on integral values, `e-05` style exponents.
pub fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// Mean and half-width of a bootstrap interval attached to a score (`--confidence`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Confidence {
    /// Bootstrap mean.
    pub mean: f64,
    /// Half-width of the 95% interval.
    pub ci: f64,
}

/// sacreBLEU's `Score.format`: the score line, the score alone (`score_only`, also in JSON mode),
/// or a JSON object; `details` (counts, totals, ...) are appended to the JSON object.
pub fn format_score(
    r: &Report,
    width: usize,
    score_only: bool,
    signature: &str,
    json: bool,
    conf: Option<Confidence>,
) -> String {
    let mut d = Object::default();
    d.insert("name", r.name.clone());
    let sc_str = format!("{:.width$}", r.score);
    d.insert("score", sc_str.parse::<f64>().unwrap_or(r.score));
    d.insert("signature", signature);
    let mut sc = sc_str.clone();
    if let Some(c) = conf.filter(|c| c.mean > 0.0) {
        let (m, v) = (format!("{:.width$}", c.mean), format!("{:.width$}", c.ci));
        let conf_str = format!("μ = {m} ± {v}");
        sc.push_str(&format!(" ({conf_str})"));
        d.insert("confidence_mean", m.parse::<f64>().unwrap_or(c.mean));
        d.insert("confidence_var", v.parse::<f64>().unwrap_or(c.ci));
        d.insert("confidence", conf_str);
    }
    let mut full = if signature.is_empty() {
        r.name.clone()
    } else {
        format!("{}|{signature}", r.name)
    };
    full = format!("{full} = {sc}");
    if let Some(v) = r.verbose.as_ref().filter(|v| !v.is_empty()) {
        full.push(' ');
        full.push_str(v);
        d.insert("verbose_score", v.clone());
    }
    if score_only {
        return sc;
    }
    if json {
        for param in signature.split('|') {
            if let Some((k, v)) = param.split_once(':') {
                d.insert(k, v);
            }
        }
        for (k, v) in &r.details {
            d.insert(*k, v.clone());
        }
        return python_json_object(&d, 1, false);
    }
    full
}

/// sacreBLEU's `print_single_results`: a JSON list for several metrics, otherwise lines aligned on `=`.
pub fn single_results(results: &[String], json: bool) -> String {
    let mut out = String::new();
    if json {
        if results.len() > 1 {
            out.push_str(&format!("[\n{}\n]\n", results.join(",\n")));
        } else if let Some(r) = results.first() {
            out.push_str(r);
            out.push('\n');
        }
        return out;
    }
    if results.len() == 1 {
        out.push_str(&results[0]);
        out.push('\n');
        return out;
    }
    let mut lens = Vec::new();
    for line in results {
        match line.find('=') {
            // Python counts characters, not bytes.
            Some(pos) => lens.push(Some(line[..pos].chars().count().saturating_sub(1))),
            None => {
                out.push_str(line);
                out.push('\n');
                lens.push(None);
            }
        }
    }
    let w = lens.iter().flatten().copied().max().unwrap_or(0);
    for (l, line) in lens.iter().zip(results) {
        if let Some(l) = l {
            let split = line.char_indices().nth(*l).map_or(line.len(), |(i, _)| i);
            let (left, right) = line.split_at(split);
            out.push_str(&format!(
                "{}{left}{right}\n",
                " ".repeat(w.saturating_sub(*l))
            ));
        }
    }
    out
}

/// A `tabulate(..., tablefmt="fancy_grid", colalign=("right",), stralign="center")` table as
/// sacreBLEU prints for several systems. Cells may hold several lines.
pub fn fancy_grid(headers: &[String], rows: &[Vec<String>]) -> String {
    let ncol = headers.len();
    let len = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| len(h) + 2).collect();
    for row in rows {
        for (c, cell) in row.iter().enumerate().take(ncol) {
            for l in cell.split('\n') {
                widths[c] = widths[c].max(len(l));
            }
        }
    }
    let align = |c: usize, s: &str| -> String {
        let w = widths[c];
        let pad = w.saturating_sub(len(s));
        if c == 0 {
            format!("{}{s}", " ".repeat(pad))
        } else {
            let left = pad / 2;
            format!("{}{s}{}", " ".repeat(left), " ".repeat(pad - left))
        }
    };
    let rule = |l: &str, m: &str, r: &str, fill: &str| -> String {
        let parts: Vec<String> = widths.iter().map(|w| fill.repeat(w + 2)).collect();
        format!("{l}{}{r}\n", parts.join(m))
    };
    let line = |cells: Vec<String>| -> String {
        let parts: Vec<String> = cells.iter().map(|c| format!(" {c} ")).collect();
        format!("│{}│\n", parts.join("│"))
    };
    let mut out = rule("╒", "╤", "╕", "═");
    out.push_str(&line(
        headers
            .iter()
            .enumerate()
            .map(|(c, h)| align(c, h))
            .collect(),
    ));
    out.push_str(&rule("╞", "╪", "╡", "═"));
    for (i, row) in rows.iter().enumerate() {
        let height = row.iter().map(|c| c.split('\n').count()).max().unwrap_or(1);
        for k in 0..height {
            out.push_str(&line(
                (0..ncol)
                    .map(|c| {
                        align(
                            c,
                            row.get(c).and_then(|x| x.split('\n').nth(k)).unwrap_or(""),
                        )
                    })
                    .collect(),
            ));
        }
        out.push_str(&if i + 1 < rows.len() {
            rule("├", "┼", "┤", "─")
        } else {
            rule("╘", "╧", "╛", "═")
        });
    }
    out
}

/// The explanation sacreBLEU prints under a paired-test table (without colours).
pub fn paired_explanation(bootstrap: bool, n: usize, baseline_name: &str) -> String {
    let (test_type, kind) = if bootstrap {
        ("bootstrap resampling", "resampling trials")
    } else {
        ("approximate randomization", "trials")
    };
    let msg = format!("Paired {test_type} test with {n} {kind}");
    let bar = "-".repeat(msg.chars().count());
    let mut s = format!("{bar}\n{msg}\n{bar}\n");
    s.push_str(&format!(
        " - Each system is pairwise compared to {baseline_name}.\n"
    ));
    s.push_str(if bootstrap {
        "   Actual system score / bootstrap estimated true mean / 95% CI are provided for each metric.\n"
    } else {
        "   Actual system score is provided for each metric.\n"
    });
    s.push_str(
        "\n - Null hypothesis: the system and the baseline translations are essentially
   generated by the same underlying process. For a given system and the baseline,
   the p-value is roughly the probability of the absolute score difference (delta)
   or higher occurring due to chance, under the assumption that the null hypothesis is correct.

 - Assuming a significance threshold of 0.05, the null hypothesis can be rejected
   for p-values < 0.05 (marked with \"*\"). This means that the delta is unlikely to be attributed
   to chance, hence the system is significantly \"different\" than the baseline.
   Otherwise, the p-values are highlighted in red.

 - NOTE: Significance does not tell whether a system is \"better\" than the baseline but rather
   emphasizes the \"difference\" of the systems in terms of the replicability of the delta.

",
    );
    s
}

/// The closing block listing each metric's signature.
pub fn signatures_block(sigs: &[(String, String)]) -> String {
    let mut s = String::from("-----------------\nMetric signatures\n-----------------\n");
    for (name, sig) in sigs {
        s.push_str(&format!(" - {name:<10} {sig}\n"));
    }
    s
}

/// The cells of a table: the system names, then one column of cells per metric.
fn table_rows(systems: &[String], columns: &[Vec<String>]) -> Vec<Vec<String>> {
    systems
        .iter()
        .enumerate()
        .map(|(i, s)| {
            std::iter::once(s.clone())
                .chain(columns.iter().map(|c| c[i].clone()))
                .collect()
        })
        .collect()
}

/// Each system's scores in `width` decimals, as several-system output shows them.
fn score_cells(c: &Column<Report>, width: usize) -> Vec<String> {
    c.results
        .iter()
        .map(|r| format_score(r, width, true, "", false, None))
        .collect()
}

/// sacreBLEU's table of several systems, one column per metric, then the signatures.
pub fn systems_table(
    systems: &[String],
    columns: &[Column<Report>],
    width: usize,
    short: bool,
) -> String {
    let mut headers = vec!["System".to_owned()];
    headers.extend(columns.iter().map(|c| c.metric.clone()));
    let cells: Vec<Vec<String>> = columns.iter().map(|c| score_cells(c, width)).collect();
    format!(
        "{}\n{}",
        fancy_grid(&headers, &table_rows(systems, &cells)),
        signatures_block(&column_signatures(columns, short))
    )
}

/// Several systems as JSON: one object per system, its name then each metric's score as text.
pub fn systems_json(systems: &[String], columns: &[Column<Report>], width: usize) -> String {
    system_objects(systems, columns, |o, c, i| {
        o.insert(
            c.metric.clone(),
            format_score(&c.results[i], width, true, "", false, None),
        );
    })
}

/// sacreBLEU's paired-test table: each score (with the bootstrap mean and interval), each system's
/// p-value under it (`*` where p <= 0.05), then the explanation and the signatures.
pub fn paired_table(
    systems: &[String],
    columns: &[Column<PairedResult>],
    method: PairedMethod,
    samples: usize,
    width: usize,
    short: bool,
) -> String {
    let w = width;
    let mut headers = vec!["System".to_owned()];
    let mut is_bootstrap = false;
    let mut cells = Vec::new();
    for c in columns {
        let col: Vec<String> = c
            .results
            .iter()
            .map(|r| {
                let mut s = format!("{:.w$}", r.score);
                if let (Some(mean), Some(ci)) = (r.mean, r.ci) {
                    is_bootstrap = true;
                    s.push_str(&format!(" ({mean:.w$} ± {ci:.w$})"));
                }
                if let Some(p) = r.p_value {
                    s.push_str(&format!("\n(p = {p:.4})"));
                    if p <= 0.05 {
                        s.push('*');
                    }
                }
                s
            })
            .collect();
        headers.push(if is_bootstrap {
            format!("{} (μ ± 95% CI)", c.metric)
        } else {
            c.metric.clone()
        });
        cells.push(col);
    }
    let baseline = systems.first().map_or("", String::as_str);
    format!(
        "{}\n{}{}",
        fancy_grid(&headers, &table_rows(systems, &cells)),
        paired_explanation(method == PairedMethod::Bootstrap, samples, baseline),
        signatures_block(&column_signatures(columns, short))
    )
}

/// Paired tests as JSON: per system, per metric, `score`, `p_value`, `mean` and `ci`.
pub fn paired_json(systems: &[String], columns: &[Column<PairedResult>]) -> String {
    system_objects(systems, columns, |o, c, i| {
        let r = &c.results[i];
        let mut d = Object::default();
        d.insert("score", r.score);
        d.insert("p_value", r.p_value);
        d.insert("mean", r.mean);
        d.insert("ci", r.ci);
        o.insert_object(c.metric.clone(), d);
    })
}

/// One JSON object per system, its name first, then what `cell` adds for each column.
fn system_objects<T>(
    systems: &[String],
    columns: &[Column<T>],
    cell: impl Fn(&mut Object, &Column<T>, usize),
) -> String {
    let rows: Vec<Object> = systems
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut o = Object::default();
            o.insert("system", s.clone());
            for c in columns {
                cell(&mut o, c, i);
            }
            o
        })
        .collect();
    python_json_objects(&rows, 4, true) + "\n"
}

/// Each metric's name and signature, for [`signatures_block`].
fn column_signatures<T>(columns: &[Column<T>], short: bool) -> Vec<(String, String)> {
    columns
        .iter()
        .map(|c| (c.metric.clone(), c.signature.format(short)))
        .collect()
}
