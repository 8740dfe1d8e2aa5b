//! JSON arrays of objects, streamed element by element.
//!
//! A small scanner finds where each top-level element ends (tracking strings and nesting), so
//! only one element is in memory at a time, and a truncated file is reported as such.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{BOM, RawRecord, parse_object};
use crate::error::{DataError, Location, Position};

/// Streams the elements of a top-level JSON array.
pub(crate) struct JsonArrayReader {
    path: PathBuf,
    reader: BufReader<File>,
    /// 1-based line of the next unread byte.
    line: u64,
    /// Elements returned so far.
    index: u64,
    state: State,
    element: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `[`.
    Start,
    /// After `[`: the next element or `]`.
    First,
    /// After an element: `,` or `]`.
    Rest,
    /// After `]`, or after an error.
    Done,
}

impl JsonArrayReader {
    pub fn new(path: &Path, reader: BufReader<File>) -> Self {
        Self {
            path: path.to_owned(),
            reader,
            line: 1,
            index: 0,
            state: State::Start,
            element: Vec::new(),
        }
    }

    /// The reader's buffer, refilled when empty.
    fn buffer(&mut self) -> Result<&[u8], DataError> {
        let Self { reader, path, .. } = self;
        reader.fill_buf().map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })
    }

    fn error(&self, message: String) -> DataError {
        DataError::Json {
            location: Location::new(&self.path, Position::Line(self.line)),
            message,
        }
    }

    fn next_byte(&mut self) -> Result<Option<u8>, DataError> {
        let Some(&byte) = self.buffer()?.first() else {
            return Ok(None);
        };
        self.reader.consume(1);
        if byte == b'\n' {
            self.line += 1;
        }
        Ok(Some(byte))
    }

    fn next_non_space(&mut self) -> Result<Option<u8>, DataError> {
        while let Some(byte) = self.next_byte()? {
            if !byte.is_ascii_whitespace() {
                return Ok(Some(byte));
            }
        }
        Ok(None)
    }

    fn next_record(&mut self) -> Result<Option<RawRecord>, DataError> {
        if self.state == State::Start {
            if self.buffer()?.starts_with(BOM) {
                self.reader.consume(BOM.len());
            }
            match self.next_non_space()? {
                None => return Ok(None),
                Some(b'[') => self.state = State::First,
                Some(other) => {
                    return Err(self.error(format!(
                        "expected a JSON array (`[`), found `{}`; for one object per line use \
                         format = \"jsonl\"",
                        char::from(other)
                    )));
                }
            }
        }
        let mut byte = self.next_non_space()?;
        if self.state == State::Rest {
            match byte {
                Some(b',') => byte = self.next_non_space()?,
                Some(b']') => byte = Some(b']'),
                Some(other) => {
                    return Err(self.error(format!(
                        "expected `,` or `]` after element {}, found `{}`",
                        self.index - 1,
                        char::from(other)
                    )));
                }
                None => {}
            }
        }
        match byte {
            None => Err(self.error(format!(
                "the file ends before the array's closing `]`, after {} element(s): it is cut off",
                self.index
            ))),
            Some(b']') if self.state == State::First || self.state == State::Rest => {
                self.state = State::Done;
                match self.next_non_space()? {
                    None => Ok(None),
                    Some(_) => Err(self.error("text after the array's closing `]`".to_owned())),
                }
            }
            Some(b'{') => self.read_object().map(Some),
            Some(other) => Err(self.error(format!(
                "element {} is not an object (it starts with `{}`); each element must be a \
                 record like {{\"instruction\": ...}}",
                self.index,
                char::from(other)
            ))),
        }
    }

    /// Reads an object whose `{` was just consumed, through its closing `}`, a buffer at a time.
    fn read_object(&mut self) -> Result<RawRecord, DataError> {
        let start_line = self.line;
        self.element.clear();
        self.element.push(b'{');
        let mut scan = Scan {
            depth: 1,
            in_string: false,
            escaped: false,
        };
        loop {
            let Self {
                reader,
                path,
                element,
                line,
                ..
            } = self;
            let buf = reader.fill_buf().map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
            if buf.is_empty() {
                return Err(DataError::Json {
                    location: self.location(start_line),
                    message: "the file ends inside this element: it is cut off".to_owned(),
                });
            }
            let (used, done) = match scan.until_closed(buf) {
                Some(end) => (end + 1, true),
                None => (buf.len(), false),
            };
            element.extend_from_slice(&buf[..used]);
            *line += buf[..used].iter().filter(|&&b| b == b'\n').count() as u64;
            reader.consume(used);
            if done {
                break;
            }
        }
        let location = self.location(start_line);
        self.index += 1;
        self.state = State::Rest;
        parse_object(&self.element, location)
    }

    fn location(&self, line: u64) -> Location {
        Location::new(
            &self.path,
            Position::Element {
                index: self.index,
                line,
            },
        )
    }
}

impl Iterator for JsonArrayReader {
    type Item = Result<RawRecord, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.state == State::Done {
            return None;
        }
        let next = self.next_record().transpose();
        if matches!(next, Some(Err(_)) | None) {
            self.state = State::Done;
        }
        next
    }
}

/// Where the scanner is inside an element: nesting depth and string state.
struct Scan {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Scan {
    /// Advances over `bytes`; returns the index of the byte that closes the element, if any.
    fn until_closed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &byte) in bytes.iter().enumerate() {
            if self.in_string {
                match byte {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
            } else {
                match byte {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            return Some(i);
                        }
                    }
                    _ => {}
                }
            }
        }
        None
    }
}
