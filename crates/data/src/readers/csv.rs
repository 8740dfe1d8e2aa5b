//! CSV with a header line; every mapped column is text.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{BOM, RawRecord, file_location};
use crate::columns::Layout;
use crate::error::{DataError, Location, Position};

/// Streams the mapped columns of a CSV file, one record in memory at a time.
pub(crate) struct CsvReader {
    path: PathBuf,
    records: ::csv::ByteRecordsIntoIter<File>,
    /// (column name, index in the header) of each mapped column.
    columns: Vec<(String, usize)>,
    failed: bool,
}

impl CsvReader {
    pub fn open(path: &Path, layout: &Layout) -> Result<Self, DataError> {
        if layout.is_chat() {
            return Err(DataError::Csv {
                location: file_location(path),
                message: "a CSV cell cannot hold chat turns; store `messages` or \
                          `conversations` data as JSON Lines or Parquet"
                    .to_owned(),
            });
        }
        let mut reader = ::csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(path)
            .map_err(|e| csv_error(path, e))?;
        let header = reader.byte_headers().map_err(|e| csv_error(path, e))?.clone();
        if header.is_empty() {
            return Err(DataError::Csv {
                location: file_location(path),
                message: "the file is empty: a CSV dataset starts with a header line naming \
                          its columns"
                    .to_owned(),
            });
        }
        let mut names = Vec::with_capacity(header.len());
        for (i, name) in header.iter().enumerate() {
            let name = if i == 0 {
                name.strip_prefix(BOM).unwrap_or(name)
            } else {
                name
            };
            let name = std::str::from_utf8(name).map_err(|_| DataError::InvalidUtf8 {
                location: Location::new(path, Position::Line(1)),
                column: None,
            })?;
            names.push(name.to_owned());
        }
        let mut columns = Vec::new();
        for column in layout.columns() {
            let index = names
                .iter()
                .position(|n| n == column)
                .ok_or_else(|| DataError::MissingColumn {
                    location: Location::new(path, Position::Line(1)),
                    column: column.to_owned(),
                    available: names.clone(),
                })?;
            columns.push((column.to_owned(), index));
        }
        Ok(Self {
            path: path.to_owned(),
            records: reader.into_byte_records(),
            columns,
            failed: false,
        })
    }

    fn convert(&self, record: ::csv::ByteRecord) -> Result<RawRecord, DataError> {
        let line = record.position().map_or(0, ::csv::Position::line);
        let location = Location::new(&self.path, Position::Line(line));
        let mut object = Map::new();
        for (column, index) in &self.columns {
            // `flexible(false)` guarantees every record has the header's length.
            let bytes = record.get(*index).unwrap_or_default();
            let text = std::str::from_utf8(bytes).map_err(|_| DataError::InvalidUtf8 {
                location: location.clone(),
                column: Some(column.clone()),
            })?;
            object.insert(column.clone(), Value::String(text.to_owned()));
        }
        Ok(RawRecord { location, object })
    }
}

fn csv_error(path: &Path, error: ::csv::Error) -> DataError {
    let line = error.position().map_or(0, ::csv::Position::line);
    let location = Location::new(path, Position::Line(line));
    let message = error.to_string();
    match error.into_kind() {
        ::csv::ErrorKind::Io(source) => DataError::Io {
            path: path.to_owned(),
            source,
        },
        ::csv::ErrorKind::UnequalLengths { expected_len, len, .. } => DataError::Csv {
            location,
            message: format!(
                "this record has {len} fields, the header has {expected_len}; quote fields \
                 that contain commas or line breaks"
            ),
        },
        _ => DataError::Csv { location, message },
    }
}

impl Iterator for CsvReader {
    type Item = Result<RawRecord, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.records.next().map(|record| {
            record
                .map_err(|e| csv_error(&self.path, e))
                .and_then(|r| self.convert(r))
        });
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}
