//! A small block-style YAML writer for the objects this crate renders.
//!
//! Only what Kubernetes manifests need: maps (in insertion order), sequences,
//! strings, integers and booleans. A string is written plain only when no
//! YAML reader can take it for anything but a string (so `"9100"`, `"true"`,
//! `"0400"` and `"fanout/fanout:0.1.0"` are quoted); a string with line
//! breaks is written as a literal block (`|`).

use std::fmt::Write as _;

/// A YAML value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Str(String),
    Int(i64),
    Bool(bool),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    /// A map from `(key, value)` pairs, in this order.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Node)>) -> Node {
        Node::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A sequence of nodes.
    pub fn seq(items: impl IntoIterator<Item = Node>) -> Node {
        Node::Seq(items.into_iter().collect())
    }

    /// A sequence of strings.
    pub fn strs<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Node {
        Node::Seq(items.into_iter().map(|s| str(s.as_ref())).collect())
    }
}

/// A string node.
pub fn str(s: &str) -> Node {
    Node::Str(s.to_owned())
}

/// An integer node.
pub fn int(i: i64) -> Node {
    Node::Int(i)
}

/// One YAML document (no `---`), ending with a newline.
pub fn to_string(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Map(entries) if !entries.is_empty() => write_entries(&mut out, entries, 0, false),
        Node::Seq(items) if !items.is_empty() => write_items(&mut out, items, 0),
        other => {
            out.push_str(&scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

/// Map entries with keys at column `indent`; with `first_inline` the first
/// key continues the current line (after a sequence's `- `).
fn write_entries(out: &mut String, entries: &[(String, Node)], indent: usize, first_inline: bool) {
    for (position, (key, value)) in entries.iter().enumerate() {
        if position > 0 || !first_inline {
            pad(out, indent);
        }
        out.push_str(&quote_if_needed(key));
        out.push(':');
        write_value(out, value, indent);
    }
}

/// The value of a key at column `indent`.
fn write_value(out: &mut String, value: &Node, indent: usize) {
    match value {
        Node::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
        Node::Map(entries) => {
            out.push('\n');
            write_entries(out, entries, indent + 2, false);
        }
        Node::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Node::Seq(items) => {
            // kubectl's style: a sequence under a key is not indented further.
            out.push('\n');
            write_items(out, items, indent);
        }
        scalar_node => {
            out.push(' ');
            out.push_str(&scalar(scalar_node, indent));
            out.push('\n');
        }
    }
}

/// Sequence items with their `- ` at column `indent`.
fn write_items(out: &mut String, items: &[Node], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push('-');
        match item {
            Node::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
            Node::Map(entries) => {
                out.push(' ');
                write_entries(out, entries, indent + 2, true);
            }
            Node::Seq(inner) if inner.is_empty() => out.push_str(" []\n"),
            Node::Seq(inner) => {
                out.push('\n');
                write_items(out, inner, indent + 2);
            }
            scalar_node => {
                out.push(' ');
                out.push_str(&scalar(scalar_node, indent));
                out.push('\n');
            }
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A scalar whose key (or `- `) is at column `indent`; a literal block's
/// lines go at `indent + 2`.
fn scalar(node: &Node, indent: usize) -> String {
    match node {
        Node::Int(i) => i.to_string(),
        Node::Bool(b) => b.to_string(),
        Node::Str(s) if literal_block_ok(s) => {
            let mut block = String::from(if s.ends_with('\n') { "|" } else { "|-" });
            for line in s.trim_end_matches('\n').split('\n') {
                block.push('\n');
                if !line.is_empty() {
                    pad(&mut block, indent + 2);
                    block.push_str(line);
                }
            }
            block
        }
        Node::Str(s) => quote_if_needed(s),
        Node::Seq(_) | Node::Map(_) => unreachable!("not a scalar"),
    }
}

/// Whether `s` can be written as a literal block and read back unchanged:
/// several lines, at most one final line break, no line starting with a
/// space (the block's indentation would be misread), no trailing spaces or
/// tabs, no control characters.
fn literal_block_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.ends_with("\n\n")
        && !s.starts_with('\n')
        && s.split('\n').all(|line| {
            !line.starts_with(' ')
                && !line.ends_with(' ')
                && !line.chars().any(|c| c.is_control() && c != '\t')
                && !line.contains('\t')
        })
}

/// `s` plain when that is unambiguously a string, else double-quoted.
pub fn quote_if_needed(s: &str) -> String {
    if plain_ok(s) {
        s.to_owned()
    } else {
        double_quoted(s)
    }
}

fn plain_ok(s: &str) -> bool {
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    // No spaces, no indicator characters but `-` and `:` inside, and a `:`
    // never last: so no `: `, ` #`, flow or anchor syntax can appear.
    let chars_ok = bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-_./=:".contains(&b))
        && !s.ends_with(':');
    let start_ok = match first {
        b'a'..=b'z' | b'A'..=b'Z' | b'/' => true,
        // `--flag` and `-c`; never `-1`, `-.5` or a lone `-`.
        b'-' => bytes
            .get(1)
            .is_some_and(|b| *b == b'-' || b.is_ascii_alphabetic()),
        // A digit starts a number, a date or a base-60 integer in some YAML
        // reader; only Kubernetes quantities (`512Mi`, `250m`) stay plain.
        b'0'..=b'9' => is_quantity_with_suffix(s),
        _ => false,
    };
    chars_ok
        && start_ok
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        )
}

/// `<digits>[.<digits>]<suffix>` with a Kubernetes quantity suffix other
/// than an exponent.
fn is_quantity_with_suffix(s: &str) -> bool {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let mut parts = number.split('.');
    let number_ok = parts
        .next()
        .is_some_and(|p| (!p.is_empty() && !p.starts_with('0')) || p == "0")
        && parts.next().is_none_or(|p| !p.is_empty())
        && parts.next().is_none();
    number_ok
        && matches!(
            suffix,
            "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "m" | "k" | "M" | "G" | "T" | "P"
        )
}

/// A YAML double-quoted string (JSON's escapes are valid YAML escapes).
fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_strings_are_quoted() {
        for s in [
            "9100",
            "0400",
            "1e3",
            "1E3",
            "4",
            "1.5",
            "0x1f",
            "0o17",
            "1_000",
            "1:20",
            "2001-12-14",
            "127.0.0.1:7000",
            "0.1.0",
            "01Gi",
            "1.Gi",
            "true",
            "False",
            "yes",
            "on",
            "null",
            "y",
            "",
            "-",
            "-1",
            "-.5",
            "- x",
            "a:",
            "a: b",
            "a #b",
            ".inf",
            "~",
            "*x",
            "&x",
            "!x",
            "%x",
            "@x",
            "`x",
            "{}",
            "[]",
            "'x'",
            "\"x\"",
            "x y",
            "a,b",
            "a[0]",
            "?x",
            "|x",
            ">x",
        ] {
            assert!(quote_if_needed(s).starts_with('"'), "{s:?} must be quoted");
        }
        for s in [
            "leaf",
            "fanout-leaf-0",
            "app.kubernetes.io/name",
            "/index/shard-0",
            "RuntimeDefault",
            "/metrics",
            "--listen=0.0.0.0:7000",
            "-c",
            "fanout/fanout:0.1.0",
            "512Mi",
            "250m",
            "0.5Gi",
            "10Gi",
            "0m",
        ] {
            assert_eq!(quote_if_needed(s), s, "{s:?} can be plain");
        }
    }

    #[test]
    fn escapes_in_double_quotes() {
        assert_eq!(double_quoted("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }

    #[test]
    fn nested_maps_and_sequences() {
        let node = Node::map([
            ("a", int(1)),
            ("b", Node::map([("c", str("d")), ("e", Node::Map(vec![]))])),
            (
                "f",
                Node::seq([
                    Node::map([("g", Node::Bool(true)), ("h", Node::strs(["x", "9"]))]),
                    str("i"),
                ]),
            ),
            ("j", Node::Seq(vec![])),
        ]);
        assert_eq!(
            to_string(&node),
            "a: 1\nb:\n  c: d\n  e: {}\nf:\n- g: true\n  h:\n  - x\n  - \"9\"\n- i\nj: []\n"
        );
    }

    #[test]
    fn multi_line_strings_are_literal_blocks() {
        let node = Node::map([(
            "command",
            Node::seq([str("/bin/sh"), str("set -eu\n\necho \"$x\"\n")]),
        )]);
        assert_eq!(
            to_string(&node),
            "command:\n- /bin/sh\n- |\n  set -eu\n\n  echo \"$x\"\n"
        );
        let node = Node::map([("k", str("a\nb"))]);
        assert_eq!(to_string(&node), "k: |-\n  a\n  b\n");
        // Not representable as a clean block: quoted instead.
        assert_eq!(
            to_string(&Node::map([("k", str(" a\nb"))])),
            "k: \" a\\nb\"\n"
        );
        assert_eq!(
            to_string(&Node::map([("k", str("a\n\n"))])),
            "k: \"a\\n\\n\"\n"
        );
    }
}
