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

/// Already shown tokens kept before the new ones when decoding: enough for a decoder that joins
/// tokens with spaces or strips a leading one to see the boundary as the full text has it.
const STREAM_CONTEXT: usize = 4;

/// Emits generated text as tokens arrive, as it reads after the prompt in the full decode.
///
/// A token decoded alone can read differently than after the tokens before it: word-level and
/// WordPiece decoders put the spaces *between* tokens, SentencePiece's strips a leading one. So
/// each step decodes a window of a few tokens already shown plus the new ones and emits what the
/// window's text gained; text ending in an incomplete UTF-8 sequence (a character spread over
/// byte-fallback tokens) is held back until it completes, as transformers' `TextStreamer` does.
/// The prompt's text followed by everything [`push`](Self::push) and [`finish`](Self::finish)
/// return is the decode of prompt + continuation.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    /// Up to [`STREAM_CONTEXT`] shown tokens, then those whose text is not out yet.
    window: Vec<u32>,
    /// `window[..shown]` is already shown (or is the prompt).
    shown: usize,
}

impl<'a> TextStream<'a> {
    /// A stream of the tokens generated after `prompt` (its ids, BOS included or not).
    pub fn new(tokenizer: &'a Tokenizer, prompt: &[u32]) -> Self {
        let window = prompt[prompt.len().saturating_sub(STREAM_CONTEXT)..].to_vec();
        Self {
            tokenizer,
            shown: window.len(),
            window,
        }
    }

    /// Adds a token and returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<String, DataError> {
        self.window.push(id);
        self.take(false)
    }

    /// The text held back at the end of generation (an incomplete character, as the full
    /// decode writes it).
    pub fn finish(mut self) -> Result<String, DataError> {
        self.take(true)
    }

    fn take(&mut self, incomplete_too: bool) -> Result<String, DataError> {
        let before = self.tokenizer.decode(&self.window[..self.shown])?;
        let text = self.tokenizer.decode(&self.window)?;
        let complete = incomplete_too || !text.ends_with('\u{FFFD}');
        let Some(new) = text
            .strip_prefix(before.as_str())
            .filter(|new| complete && !new.is_empty())
        else {
            return Ok(String::new());
        };
        let new = new.to_owned();
        self.window.drain(..self.window.len().saturating_sub(STREAM_CONTEXT));
        self.shown = self.window.len();
        Ok(new)
    }
}
