use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::gguf::{self, GgufFile};

/// A checkpoint's `tokenizer.json`, with Gemma's BOS and stop-token conventions.
pub struct GemmaTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    bos: u32,
    stop_tokens: Vec<u32>,
}

impl GemmaTokenizer {
    /// Loads `tokenizer.json` from `dir`; stop tokens come from `generation_config.json`,
    /// `tokenizer_config.json` and the chat format's `<end_of_turn>`. A GGUF file in place of
    /// the directory gives its embedded tokenizer ([`GemmaTokenizer::from_gguf`]).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if gguf::is_gguf(dir) {
            return Self::from_gguf(dir);
        }
        let mut tokenizer = Self::from_file(&dir.join("tokenizer.json"))?;
        let mut stops = Vec::new();
        if let Some(generation) = read_json(&dir.join("generation_config.json"))? {
            stops.extend(token_ids(generation.get("eos_token_id")));
        }
        if let Some(tok_config) = read_json(&dir.join("tokenizer_config.json"))? {
            if let Some(id) = special_token(tok_config.get("eos_token")).and_then(|t| tokenizer.token_id(t)) {
                stops.push(id);
            }
            if let Some(id) = special_token(tok_config.get("bos_token")).and_then(|t| tokenizer.token_id(t)) {
                tokenizer.bos = id;
            }
        }
        for id in stops {
            if !tokenizer.stop_tokens.contains(&id) {
                tokenizer.stop_tokens.push(id);
            }
        }
        Ok(tokenizer)
    }

    /// Loads a `tokenizer.json`; BOS is `<bos>`, stop tokens `<eos>` and `<end_of_turn>`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let error = |message: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if !path.exists() {
            return Err(error(
                "file not found; a checkpoint directory needs tokenizer.json".into(),
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| error(e.to_string()))?;
        Self::new(inner, path)
    }

    /// The tokenizer embedded in a GGUF file, with its BOS and its EOS and `<end_of_turn>` as
    /// stop tokens.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let mut tokenizer = Self::new(gguf::tokenizer(&file)?, path)?;
        if let Some(bos) = file.get_usize("tokenizer.ggml.bos_token_id")? {
            tokenizer.bos = bos as u32;
        }
        let generation = gguf::generation_config(&file)?;
        for id in token_ids(generation.get("eos_token_id")) {
            if !tokenizer.stop_tokens.contains(&id) {
                tokenizer.stop_tokens.push(id);
            }
        }
        Ok(tokenizer)
    }

    fn new(inner: tokenizers::Tokenizer, path: &Path) -> Result<Self> {
        let error = |message: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let bos = inner
            .token_to_id("<bos>")
            .ok_or_else(|| error("has no `<bos>` token; is this a Gemma tokenizer?".into()))?;
        let stop_tokens = ["<eos>", "<end_of_turn>"]
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .collect();
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            bos,
            stop_tokens,
        })
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// Tokens that end generation.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` with exactly one `<bos>` in front, whether or not the text
    /// already starts with one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.encode_raw(text)?;
        let start = ids.iter().take_while(|&&id| id == self.bos).count();
        Ok(std::iter::once(self.bos).chain(ids[start..].iter().copied()).collect())
    }

    /// Token ids of `text` with no special tokens added.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| self.error(e))
    }

    fn error(&self, e: tokenizers::Error) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// Emits decoded text as tokens arrive, holding back incomplete UTF-8 sequences
/// (what transformers' `TextStreamer` does).
pub struct TextStream<'a> {
    tokenizer: &'a GemmaTokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a GemmaTokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token and returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(String::new());
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(new)
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// `eos_token_id` is a single id or a list.
fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_u64).map(|n| n as u32).collect(),
        Some(v) => v.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        None => Vec::new(),
    }
}

/// A special token written as `"<eos>"` or `{"content": "<eos>", ...}`.
fn special_token(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}
