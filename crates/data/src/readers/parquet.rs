//! Parquet, as Hugging Face `datasets` writes it: read row by row through the record API,
//! one row group in memory at a time, only the mapped columns.

use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use parquet::basic::Type as PhysicalType;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use serde_json::{Map, Number, Value};

use super::{RawRecord, file_location};
use crate::columns::Layout;
use crate::error::{DataError, Location, Position};

/// Streams the mapped columns of a Parquet file.
pub(crate) struct ParquetReader {
    path: PathBuf,
    rows: RowIter<'static>,
    row: u64,
    failed: bool,
}

impl ParquetReader {
    pub fn open(path: &Path, layout: &Layout) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
        let reader = SerializedFileReader::new(file).map_err(|e| DataError::Parquet {
            location: file_location(path),
            message: format!("not a readable parquet file: {e}"),
        })?;
        let schema = reader.metadata().file_metadata().schema_descr().root_schema();
        let available: Vec<String> = schema.get_fields().iter().map(|f| f.name().to_owned()).collect();
        let mut selected = Vec::new();
        for column in layout.columns() {
            let field =
                schema
                    .get_fields()
                    .iter()
                    .find(|f| f.name() == column)
                    .ok_or_else(|| DataError::MissingColumn {
                        location: file_location(path),
                        column: column.to_owned(),
                        available: available.clone(),
                    })?;
            check_type(path, field, layout.is_chat())?;
            selected.push(field.clone());
        }
        let projection = Type::group_type_builder(schema.name())
            .with_fields(selected)
            .build()
            .map_err(|e| parquet_error(file_location(path), &e))?;
        let rows = reader
            .into_iter()
            .project(Some(projection))
            .map_err(|e| parquet_error(file_location(path), &e))?;
        Ok(Self {
            path: path.to_owned(),
            rows,
            row: 0,
            failed: false,
        })
    }

    fn next_record(&mut self) -> Option<Result<RawRecord, DataError>> {
        let location = Location::new(&self.path, Position::Row(self.row));
        // The record reader panics on some malformed files; a bad file must be an error.
        let next = catch_unwind(AssertUnwindSafe(|| self.rows.next())).unwrap_or_else(|_| {
            Some(Err(parquet::errors::ParquetError::General(
                "the parquet reader failed on this row (corrupt or unsupported file)".into(),
            )))
        })?;
        self.row += 1;
        Some(
            next.map_err(|e| parquet_error(location.clone(), &e))
                .and_then(|row| row_to_object(row, &location))
                .map(|object| RawRecord { location, object }),
        )
    }
}

/// Text columns must hold byte arrays (strings), chat columns nested groups (lists).
fn check_type(path: &Path, field: &Type, chat: bool) -> Result<(), DataError> {
    let found = if field.is_primitive() {
        let physical = field.get_physical_type();
        if !chat && physical == PhysicalType::BYTE_ARRAY {
            return Ok(());
        }
        format!("{physical} values")
    } else {
        if chat {
            return Ok(());
        }
        "nested values".to_owned()
    };
    Err(DataError::WrongType {
        location: file_location(path),
        column: field.name().to_owned(),
        expected: if chat { "a list of turns" } else { "text" },
        found,
    })
}

fn row_to_object(row: Row, location: &Location) -> Result<Map<String, Value>, DataError> {
    row.into_columns()
        .into_iter()
        .map(|(name, field)| {
            let value = field_to_json(field, &name, location)?;
            Ok((name, value))
        })
        .collect()
}

fn field_to_json(field: Field, column: &str, location: &Location) -> Result<Value, DataError> {
    let number = |n: Option<Number>| n.map_or(Value::Null, Value::Number);
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(b),
        Field::Byte(n) => Value::from(n),
        Field::Short(n) => Value::from(n),
        Field::Int(n) => Value::from(n),
        Field::Long(n) => Value::from(n),
        Field::UByte(n) => Value::from(n),
        Field::UShort(n) => Value::from(n),
        Field::UInt(n) => Value::from(n),
        Field::ULong(n) => Value::from(n),
        Field::Float(x) => number(Number::from_f64(f64::from(x))),
        Field::Double(x) => number(Number::from_f64(x)),
        Field::Str(s) => Value::String(s),
        Field::Bytes(bytes) => match String::from_utf8(bytes.data().to_vec()) {
            Ok(s) => Value::String(s),
            Err(_) => {
                return Err(DataError::InvalidUtf8 {
                    location: location.clone(),
                    column: Some(column.to_owned()),
                });
            }
        },
        Field::Group(row) => Value::Object(row_to_object(row, location)?),
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .map(|f| field_to_json(f.clone(), column, location))
                .collect::<Result<_, _>>()?,
        ),
        other => {
            return Err(DataError::Parquet {
                location: location.clone(),
                message: format!(
                    "column `{column}` holds a {other:?} value; only text, numbers, booleans, \
                     lists and structs can be read"
                ),
            });
        }
    })
}

fn parquet_error(location: Location, error: &parquet::errors::ParquetError) -> DataError {
    DataError::Parquet {
        location,
        message: error.to_string(),
    }
}

impl Iterator for ParquetReader {
    type Item = Result<RawRecord, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_record();
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}
