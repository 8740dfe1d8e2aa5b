//! The Hugging Face tokenizer, with the special tokens the pipeline places itself.

use std::path::Path;

use crate::error::DataError;

/// A `tokenizer.json` tokenizer and its BOS, EOS and padding ids.
///
/// Text is encoded without the tokenizer's own special tokens (the pipeline puts exactly one
/// BOS in front) and with special-token strings in *data* read as plain text: a response that
/// contains the characters `<eos>` is trained as those characters, never as the EOS token.
/// Templates may hold special tokens (`<start_of_turn>`); they are placed by id.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    /// Special added tokens, longest first, for finding them in template text.
    specials: Vec<(String, u32)>,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. Needs `<bos>` and `<eos>` tokens; padding uses
    /// `<pad>`, or `<eos>` when there is none (padded positions are masked either way).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::new(inner)
    }

    /// Wraps an already loaded tokenizer.
    pub fn new(mut inner: tokenizers::Tokenizer) -> Result<Self, DataError> {
        // Lengths are the pipeline's business: never let tokenizer.json truncate or pad.
        inner
            .with_truncation(None)
            .map_err(|e| DataError::Tokenize { message: e.to_string() })?;
        inner.with_padding(None);
        inner.set_encode_special_tokens(true);
        let id = |token: &str, needed_for| {
            inner.token_to_id(token).ok_or_else(|| DataError::MissingToken {
                token: token.to_owned(),
                needed_for,
            })
        };
        let bos = id("<bos>", "every sample starts with it; use a Gemma tokenizer.json")?;
        let eos = id("<eos>", "every response ends with it; use a Gemma tokenizer.json")?;
        let pad = inner.token_to_id("<pad>").unwrap_or(eos);
        let mut specials: Vec<(String, u32)> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, token)| (token.content, id))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            specials,
        })
    }

    /// The id put once at the start of every sample.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The id that ends every response.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The id written at padded positions.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The id of a token, e.g. `<start_of_turn>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Special tokens (content, id), longest first.
    pub(crate) fn specials(&self) -> &[(String, u32)] {
        &self.specials
    }

    /// Token ids of `text` with their byte ranges in `text`; no special tokens are added and
    /// special-token strings in `text` stay text.
    pub(crate) fn encode_text(&self, text: &str) -> Result<tokenizers::Encoding, DataError> {
        self.inner
            .encode(text, false)
            .map_err(|e| DataError::Tokenize { message: e.to_string() })
    }

    /// Text of `ids`, special tokens written out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| DataError::Tokenize { message: e.to_string() })
    }
}
