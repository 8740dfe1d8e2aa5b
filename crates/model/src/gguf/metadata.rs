//! Typed reads of GGUF metadata, with errors that name the file and the key.

use super::reader::{GgufFile, Value};
use crate::error::{ModelError, Result};

impl GgufFile {
    pub(crate) fn key_error(&self, key: &str, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path().to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn typed<'a, T>(&'a self, key: &str, expected: &str, read: impl Fn(&'a Value) -> Option<T>) -> Result<Option<T>> {
        self.get(key)
            .map(|v| read(v).ok_or_else(|| self.key_error(key, format!("expected {expected}, found {v:?}"))))
            .transpose()
    }

    /// A non-negative integer.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        self.typed(key, "a non-negative integer", |v| {
            v.as_u64().and_then(|n| usize::try_from(n).ok())
        })
    }

    pub fn required_usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key)?
            .ok_or_else(|| self.key_error(key, "missing; it is required to build the model"))
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "true or false", Value::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&[Value]>> {
        self.typed(key, "an array", Value::as_array)
    }
}
