//! JSON Lines: one JSON object per line; blank lines are allowed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{BOM, RawRecord, parse_object};
use crate::error::{DataError, Location, Position};

/// Streams the records of a JSON Lines file, one line in memory at a time.
pub(crate) struct JsonlReader {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
    failed: bool,
}

impl JsonlReader {
    pub fn new(path: &Path, reader: BufReader<File>) -> Self {
        Self {
            path: path.to_owned(),
            reader,
            line: 0,
            buf: Vec::new(),
            failed: false,
        }
    }

    fn next_record(&mut self) -> Result<Option<RawRecord>, DataError> {
        loop {
            self.buf.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| DataError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if read == 0 {
                return Ok(None);
            }
            self.line += 1;
            let mut bytes = self.buf.as_slice();
            if self.line == 1 {
                bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let location = Location::new(&self.path, Position::Line(self.line));
            return parse_object(bytes, location).map(Some);
        }
    }
}

impl Iterator for JsonlReader {
    type Item = Result<RawRecord, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_record().transpose();
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}
