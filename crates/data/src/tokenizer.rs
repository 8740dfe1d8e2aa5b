//! The Hugging Face tokenizer with Gemma's conventions: the one tokenizer type of training (the
//! pipeline places BOS, EOS and template specials itself) and of generation (prompts, stop
//! tokens, streamed text).

use std::path::Path;

use crate::error::DataError;

/// A `tokenizer.json` tokenizer and its BOS, EOS, padding and stop ids.
///
/// The pipeline encodes *data* without the tokenizer's own special tokens and with
/// special-token strings read as plain text: a response that contains the characters `<eos>` is
/// trained as those characters, never as the EOS token. Templates may hold special tokens
/// (`<start_of_turn>`); they are placed by id. A *prompt* ([`Tokenizer::encode`]) is read as
/// transformers reads one: special-token strings in it are those tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    stop_tokens: Vec<u32>,
    /// Special added tokens, longest first, for finding them in template and prompt text.
    specials: Vec<(String, u32)>,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. Needs `<bos>` and `<eos>` tokens; padding uses
    /// `<pad>`, or `<eos>` when there is none (padded positions are masked either way).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let error = |message: String| DataError::Tokenizer {
            path: path.to_owned(),
            message,
        };
        if !path.exists() {
            return Err(error(
                "file not found; a checkpoint directory needs tokenizer.json".into(),
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| error(e.to_string()))?;
        Self::new(inner)
    }

    /// Wraps an already loaded tokenizer. Generation stops at `<eos>` and, where the vocabulary
    /// has it, `<end_of_turn>`.
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
        let stop_tokens = std::iter::once(eos).chain(inner.token_to_id("<end_of_turn>")).collect();
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
            stop_tokens,
            specials,
        })
    }

    /// Uses `id` as BOS (a model's `tokenizer_config.json` or GGUF metadata may name another).
    pub fn set_bos(&mut self, id: u32) {
        self.bos = id;
    }

    /// Also ends generation at `id` (e.g. the `eos_token_id`s of `generation_config.json`).
    pub fn add_stop_token(&mut self, id: u32) {
        if !self.stop_tokens.contains(&id) {
            self.stop_tokens.push(id);
        }
    }

    /// The id put once at the start of every sample and prompt.
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

    /// Tokens that end generation.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// The id of a token, e.g. `<start_of_turn>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Special tokens (content, id), longest first.
    pub(crate) fn specials(&self) -> &[(String, u32)] {
        &self.specials
    }

    /// Token ids of a prompt with exactly one `<bos>` in front, whether or not the text
    /// already starts with one; special-token strings in it are those tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let ids = self.encode_raw(text)?;
        let start = ids.iter().take_while(|&&id| id == self.bos).count();
        Ok(std::iter::once(self.bos).chain(ids[start..].iter().copied()).collect())
    }

    /// Token ids of `text` as transformers encodes it without special tokens added: the text
    /// is split at special-token strings, which become their ids.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let mut ids = Vec::new();
        let mut plain = 0;
        let mut at = 0;
        while at < text.len() {
            let rest = &text[at..];
            match self
                .specials
                .iter()
                .find(|(content, _)| rest.starts_with(content.as_str()))
            {
                Some((content, id)) => {
                    ids.extend_from_slice(self.encode_text(&text[plain..at])?.get_ids());
                    ids.push(*id);
                    at += content.len();
                    plain = at;
                }
                None => at += rest.chars().next().map_or(1, char::len_utf8),
            }
        }
        ids.extend_from_slice(self.encode_text(&text[plain..])?.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` with their byte ranges in `text`; no special tokens are added and
    /// special-token strings in `text` stay text.
    pub(crate) fn encode_text(&self, text: &str) -> Result<tokenizers::Encoding, DataError> {
        self.inner
            .encode(text, false)
            .map_err(|e| DataError::Tokenize { message: e.to_string() })
    }

    /// Text of `ids`, special tokens left out: what a generated answer says.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| DataError::Tokenize { message: e.to_string() })
    }

    /// Text of `ids`, special tokens written out: what training saw.
    pub fn decode_with_specials(&self, ids: &[u32]) -> Result<String, DataError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| DataError::Tokenize { message: e.to_string() })
    }
}

/// Emits decoded text as tokens arrive, holding back incomplete UTF-8 sequences
/// (what transformers' `TextStreamer` does).
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token and returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<String, DataError> {
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
