//! Reading a corpus: JSON Lines, plain or gzip, one document per line.
//!
//! Compression is recognised by the gzip magic bytes (`1f 8b`), whatever the
//! file is called. Each non-blank line must be a JSON object whose id field is
//! a non-empty string; title and text fields are optional (absent or `null`
//! means empty) but must be strings when present. Other fields are ignored.
//! Blank lines are not documents and are passed over. Anything else is a bad
//! line, reported with its 1-based line number and the reason.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use serde_json::Value;

use crate::LeafError;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// The names of the fields a corpus line is read from.
#[derive(Debug, Clone)]
pub(crate) struct CorpusFieldNames {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) text: String,
}

/// One document read from the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CorpusDocument {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) text: String,
}

/// What one line of the corpus holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CorpusLine {
    Document(CorpusDocument),
    Blank,
    Bad { reason: String },
}

/// Opens `path` for line reading, decompressing it when it starts with the
/// gzip magic bytes. `count_read` wraps the raw file, to count the bytes read
/// from disk (the progress bar).
pub(crate) fn open_corpus<R, W>(
    path: &Path,
    count_read: W,
) -> Result<Box<dyn BufRead + Send>, LeafError>
where
    R: Read + Send + 'static,
    W: FnOnce(File) -> R,
{
    let file = File::open(path).map_err(|error| LeafError::io(path, error))?;
    let mut raw = BufReader::with_capacity(READ_BUFFER_BYTES, count_read(file));
    let is_gzip = starts_with_gzip_magic(&mut raw).map_err(|error| LeafError::io(path, error))?;
    if is_gzip {
        let decoder = MultiGzDecoder::new(raw);
        return Ok(Box::new(BufReader::with_capacity(
            READ_BUFFER_BYTES,
            decoder,
        )));
    }
    Ok(Box::new(raw))
}

/// Peeks at the first bytes without consuming them. The first read of a
/// regular file fills the buffer with far more than two bytes; a file shorter
/// than two bytes cannot be gzip.
fn starts_with_gzip_magic(reader: &mut impl BufRead) -> std::io::Result<bool> {
    Ok(reader.fill_buf()?.starts_with(&GZIP_MAGIC))
}

/// Parses one line of the corpus (without its line terminator).
pub(crate) fn parse_corpus_line(line: &[u8], names: &CorpusFieldNames) -> CorpusLine {
    if line.iter().all(u8::is_ascii_whitespace) {
        return CorpusLine::Blank;
    }
    let bad = |reason: String| CorpusLine::Bad { reason };
    let value: Value = match serde_json::from_slice(line) {
        Ok(value) => value,
        Err(error) => return bad(format!("invalid json: {error}")),
    };
    let Value::Object(mut object) = value else {
        return bad("the line is not a json object".into());
    };
    let id = match object.remove(&names.id) {
        None | Some(Value::Null) => return bad(format!("missing id field {:?}", names.id)),
        Some(Value::String(id)) => id,
        Some(other) => {
            return bad(format!(
                "id field {:?} is not a string but {}",
                names.id,
                json_kind(&other)
            ));
        }
    };
    if id.trim().is_empty() {
        return bad(format!("empty id in field {:?}", names.id));
    }
    let mut optional_text = |name: &str| match object.remove(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!(
            "field {name:?} is not a string but {}",
            json_kind(&other)
        )),
    };
    let title = match optional_text(&names.title) {
        Ok(title) => title,
        Err(reason) => return bad(reason),
    };
    let text = match optional_text(&names.text) {
        Ok(text) => text,
        Err(reason) => return bad(reason),
    };
    CorpusLine::Document(CorpusDocument { id, title, text })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn beir_names() -> CorpusFieldNames {
        CorpusFieldNames {
            id: "_id".into(),
            title: "title".into(),
            text: "text".into(),
        }
    }

    fn reason_of(line: &str) -> String {
        match parse_corpus_line(line.as_bytes(), &beir_names()) {
            CorpusLine::Bad { reason } => reason,
            other => panic!("{line:?} should be bad, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_document_with_configured_field_names() {
        let line = r#"{"_id": "7", "title": "T", "text": "body", "metadata": {}}"#;
        assert_eq!(
            parse_corpus_line(line.as_bytes(), &beir_names()),
            CorpusLine::Document(CorpusDocument {
                id: "7".into(),
                title: "T".into(),
                text: "body".into(),
            })
        );
    }

    #[test]
    fn absent_or_null_title_and_text_are_empty() {
        let line = r#"{"_id": "7", "title": null}"#;
        let CorpusLine::Document(document) = parse_corpus_line(line.as_bytes(), &beir_names())
        else {
            panic!("should be a document");
        };
        assert_eq!((document.title.as_str(), document.text.as_str()), ("", ""));
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(reason_of("{not json").starts_with("invalid json"));
        assert!(reason_of("[1, 2]").contains("not a json object"));
        assert!(reason_of(r#"{"id": "7"}"#).contains("missing id field \"_id\""));
        assert!(reason_of(r#"{"_id": ""}"#).contains("empty id"));
        assert!(reason_of(r#"{"_id": 7}"#).contains("not a string but a number"));
        assert!(reason_of(r#"{"_id": "7", "text": ["a"]}"#).contains("\"text\" is not a string"));
        assert_eq!(parse_corpus_line(b"   ", &beir_names()), CorpusLine::Blank);
    }

    #[test]
    fn recognises_gzip_by_its_magic_bytes_not_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"_id\": \"1\"}\n{\"_id\": \"2\"}\n";

        // Gzip content in a file named like plain text.
        let gzip_path = dir.path().join("corpus.jsonl");
        let mut encoder = flate2::write::GzEncoder::new(
            File::create(&gzip_path).unwrap(),
            flate2::Compression::fast(),
        );
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap();

        // Plain content in a file named like gzip.
        let plain_path = dir.path().join("corpus.jsonl.gz");
        std::fs::write(&plain_path, text).unwrap();

        for path in [gzip_path, plain_path] {
            let mut reader = open_corpus(&path, |file| file).unwrap();
            let mut content = String::new();
            reader.read_to_string(&mut content).unwrap();
            assert_eq!(content, text, "{}", path.display());
        }
    }

    #[test]
    fn an_empty_or_one_byte_file_is_plain() {
        let dir = tempfile::tempdir().unwrap();
        for content in ["", "\n"] {
            let path = dir.path().join("tiny.jsonl");
            std::fs::write(&path, content).unwrap();
            let mut reader = open_corpus(&path, |file| file).unwrap();
            let mut read = String::new();
            reader.read_to_string(&mut read).unwrap();
            assert_eq!(read, content);
        }
    }

    proptest::proptest! {
        /// Fuzz target of the corpus line reader: any bytes are a document,
        /// a blank line or a bad line with a reason, never a panic.
        #[test]
        fn any_bytes_are_a_document_a_blank_or_a_bad_line(
            line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            json_ish in "\\{(\"[a-z_]{1,6}\": (\"\\PC{0,12}\"|[0-9]{1,4}|null|true|\\[\\]), ){0,4}\\}",
        ) {
            let names = CorpusFieldNames {
                id: "id".into(),
                title: "title".into(),
                text: "text".into(),
            };
            for input in [line.as_slice(), json_ish.as_bytes()] {
                if let CorpusLine::Bad { reason } = parse_corpus_line(input, &names) {
                    proptest::prop_assert!(!reason.is_empty());
                }
            }
        }
    }
}
