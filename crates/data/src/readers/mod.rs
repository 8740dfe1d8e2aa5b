//! Dataset files to raw records: finding the files, telling their format, streaming them.
//!
//! Each reader streams: it holds one record (JSON Lines, CSV, JSON arrays) or one row group
//! (Parquet) at a time, never the whole file. Every reader yields JSON objects, so the column
//! mapping and its error messages are shared by all formats.

mod csv;
mod json;
mod jsonl;
mod parquet;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::columns::Layout;
use crate::config::Format;
use crate::error::{DataError, Location, Position};

/// One record as read from a file, before the column mapping.
pub(crate) struct RawRecord {
    pub location: Location,
    pub object: Map<String, Value>,
}

/// A stream of raw records from one file.
pub(crate) type Records = Box<dyn Iterator<Item = Result<RawRecord, DataError>>>;

const EXTENSIONS: [&str; 4] = ["jsonl", "json", "parquet", "csv"];

/// The files `path` names: the file itself, every data file below a directory (sorted,
/// hidden entries skipped), or the files a glob matches (sorted).
pub(crate) fn discover(path: &str) -> Result<Vec<PathBuf>, DataError> {
    let as_path = Path::new(path);
    let files = if as_path.is_file() {
        vec![as_path.to_owned()]
    } else if as_path.is_dir() {
        let mut files = Vec::new();
        walk(as_path, &mut files)?;
        files
    } else if path.contains(['*', '?', '[']) {
        let entries = glob::glob(path).map_err(|e| DataError::Glob {
            pattern: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let file = entry.map_err(|e| DataError::Io {
                path: e.path().to_owned(),
                source: e.into(),
            })?;
            if file.is_file() {
                files.push(file);
            }
        }
        files
    } else {
        return Err(DataError::Io {
            path: as_path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    };
    if files.is_empty() {
        return Err(DataError::NoFiles {
            pattern: path.to_owned(),
        });
    }
    let mut files = files;
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, files)?;
        } else if extension(&path).is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
            files.push(path);
        }
    }
    Ok(())
}

fn extension(path: &Path) -> Option<String> {
    path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase)
}

/// Opens `path` as `format` (or by its extension) and streams the columns `layout` reads.
pub(crate) fn open(path: &Path, format: Format, layout: &Layout) -> Result<Records, DataError> {
    Ok(match (format, extension(path).as_deref()) {
        (Format::Jsonl, _) | (Format::Auto, Some("jsonl")) => Box::new(jsonl::JsonlReader::new(path, open_file(path)?)),
        (Format::Json, _) | (Format::Auto, Some("json")) => {
            if first_byte(path)? == Some(b'{') {
                Box::new(jsonl::JsonlReader::new(path, open_file(path)?))
            } else {
                Box::new(json::JsonArrayReader::new(path, open_file(path)?))
            }
        }
        (Format::Parquet, _) | (Format::Auto, Some("parquet")) => Box::new(parquet::ParquetReader::open(path, layout)?),
        (Format::Csv, _) | (Format::Auto, Some("csv")) => Box::new(csv::CsvReader::open(path, layout)?),
        (Format::Auto, _) => {
            return Err(DataError::UnknownFormat { path: path.to_owned() });
        }
    })
}

fn open_file(path: &Path) -> Result<BufReader<File>, DataError> {
    File::open(path)
        .map(|f| BufReader::with_capacity(1 << 16, f))
        .map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })
}

/// The first byte of the file that is not whitespace or a UTF-8 byte order mark.
fn first_byte(path: &Path) -> Result<Option<u8>, DataError> {
    let mut reader = open_file(path)?;
    loop {
        let buf = reader.fill_buf().map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
        let Some(&byte) = buf.first() else {
            return Ok(None);
        };
        if byte.is_ascii_whitespace() {
            reader.consume(1);
        } else if buf.starts_with(BOM) {
            reader.consume(BOM.len());
        } else {
            return Ok(Some(byte));
        }
    }
}

/// The UTF-8 byte order mark some editors put at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses one JSON record, naming its location if it is malformed or not an object.
fn parse_object(bytes: &[u8], location: Location) -> Result<RawRecord, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DataError::InvalidUtf8 {
        location: location.clone(),
        column: None,
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| DataError::Json {
        location: location.clone(),
        message: strip_position(&e),
    })?;
    match value {
        Value::Object(object) => Ok(RawRecord { location, object }),
        other => Err(DataError::Json {
            message: format!("a record must be a JSON object, this one is {}", json_kind(&other)),
            location,
        }),
    }
}

/// serde_json's message without its "at line 1 column 5" (the location names the line), plus
/// the column when there is one.
fn strip_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
    match e.column() {
        0 => message.to_owned(),
        column => format!("{message} (column {column})"),
    }
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

/// A location at the level of the whole file.
fn file_location(path: &Path) -> Location {
    Location::new(path, Position::File)
}
