//! The vocabulary embedded in a GGUF file (`tokenizer.ggml.*`) as a Hugging Face tokenizer.
//!
//! Gemma's tokenizer is a SentencePiece BPE model with byte fallback, which llama.cpp stores as
//! pieces, scores and token types. This rebuilds what transformers' `GemmaConverter` makes of the
//! SentencePiece model: a BPE whose merges are every split of a piece into two pieces, ranked by
//! the piece's score; spaces normalised to `▁`; control and user-defined pieces as added tokens
//! matched before the model runs. Two changes llama.cpp makes are undone: it writes user-defined
//! pieces with `▁` turned into spaces, and gives added tokens the score -1000 where SentencePiece
//! has 0, the score their merges rank by.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::json;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::models::bpe::{BPE, Vocab as BpeVocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, SplitDelimiterBehavior, Tokenizer};

use super::reader::{GgufFile, Value};
use crate::error::{ModelError, Result};

/// llama.cpp's token types (`llama_token_type`) that matter here.
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// SentencePiece's word-boundary marker, which stands for a space inside pieces.
const SPACE: &str = "\u{2581}";

/// The pieces of a GGUF vocabulary as SentencePiece had them.
struct Vocab {
    pieces: Vec<String>,
    /// The scores merges are ranked by.
    scores: Vec<f32>,
    types: Vec<i64>,
}

impl Vocab {
    fn read(file: &GgufFile) -> Result<Self> {
        match file.get_str("tokenizer.ggml.model")? {
            Some("llama") => {}
            other => {
                return Err(tokenizer_error(
                    file,
                    format!(
                        "tokenizer.ggml.model is {other:?}; Ember converts SentencePiece vocabularies \
                         (`llama`), which every Gemma has"
                    ),
                ));
            }
        }
        if file.get_bool("tokenizer.ggml.add_space_prefix")? == Some(true) {
            return Err(tokenizer_error(
                file,
                "tokenizer.ggml.add_space_prefix is true; Gemma's tokenizer adds no space prefix".into(),
            ));
        }
        let array = |key: &str| -> Result<&[Value]> {
            file.get_array(key)?
                .ok_or_else(|| tokenizer_error(file, format!("{key} is missing")))
        };
        let tokens = array("tokenizer.ggml.tokens")?;
        let scores = array("tokenizer.ggml.scores")?;
        let types = array("tokenizer.ggml.token_type")?;
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(tokenizer_error(
                file,
                format!(
                    "{} tokens but {} scores and {} token types",
                    tokens.len(),
                    scores.len(),
                    types.len()
                ),
            ));
        }
        let mut vocab = Vocab {
            pieces: Vec::with_capacity(tokens.len()),
            scores: Vec::with_capacity(tokens.len()),
            types: Vec::with_capacity(tokens.len()),
        };
        for (id, ((token, score), kind)) in tokens.iter().zip(scores).zip(types).enumerate() {
            let bad = |what: &str| tokenizer_error(file, format!("token {id} has an invalid {what}"));
            let (token, score, kind) = (
                token.as_str().ok_or_else(|| bad("text"))?,
                match score {
                    Value::F32(s) => *s,
                    other => other.as_f64().ok_or_else(|| bad("score"))? as f32,
                },
                kind.as_i64().ok_or_else(|| bad("type"))?,
            );
            let added = matches!(kind, UNKNOWN | CONTROL | USER_DEFINED);
            vocab.pieces.push(match kind {
                USER_DEFINED => token.replace(' ', SPACE),
                _ => token.to_string(),
            });
            vocab.scores.push(if added { 0.0 } else { score });
            vocab.types.push(kind);
        }
        Ok(vocab)
    }

    /// transformers' `generate_merges`: for each piece in id order, every split into two pieces
    /// (ordered by their ids), then all of them ranked by the piece's score, longer left and
    /// right parts first, keeping that order among equals.
    fn merges(&self) -> Vec<(String, String)> {
        let ids: HashMap<&str, usize> = self.pieces.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
        struct Merge {
            left: usize,
            right: usize,
            score: f32,
            left_chars: usize,
            right_chars: usize,
        }
        let mut merges = Vec::new();
        for (piece, &score) in self.pieces.iter().zip(&self.scores) {
            let start = merges.len();
            for (at, _) in piece.char_indices().skip(1) {
                let (left, right) = piece.split_at(at);
                if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                    merges.push(Merge {
                        left: l,
                        right: r,
                        score,
                        left_chars: left.chars().count(),
                        right_chars: right.chars().count(),
                    });
                }
            }
            merges[start..].sort_by_key(|m| (m.left, m.right));
        }
        merges.sort_by(|a, b| {
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(Ordering::Equal)
                .then(b.left_chars.cmp(&a.left_chars))
                .then(b.right_chars.cmp(&a.right_chars))
        });
        merges
            .into_iter()
            .map(|m| (self.pieces[m.left].clone(), self.pieces[m.right].clone()))
            .collect()
    }

    /// Control, unknown and user-defined pieces, which are matched in the text before the BPE
    /// runs. Control pieces are special (left out of decoded text), as llama.cpp treats them.
    fn added_tokens(&self) -> Vec<AddedToken> {
        self.pieces
            .iter()
            .zip(&self.types)
            .filter(|(_, kind)| matches!(**kind, UNKNOWN | CONTROL | USER_DEFINED))
            .map(|(piece, &kind)| AddedToken::from(piece.clone(), kind != USER_DEFINED).normalized(false))
            .collect()
    }

    /// The id under `key` (`tokenizer.ggml.bos_token_id`, …) and its piece.
    fn special(&self, file: &GgufFile, key: &str) -> Result<Option<(u32, &str)>> {
        match file.get_usize(key)? {
            None => Ok(None),
            Some(id) => self
                .pieces
                .get(id)
                .map(|p| Some((id as u32, p.as_str())))
                .ok_or_else(|| file.key_error(key, format!("token id {id} is outside the vocabulary"))),
        }
    }
}

/// The tokenizer of the vocabulary in `file`.
pub fn tokenizer(file: &GgufFile) -> Result<Tokenizer> {
    let vocab = Vocab::read(file)?;
    let unk = vocab
        .special(file, "tokenizer.ggml.unknown_token_id")?
        .map_or("<unk>", |(_, p)| p);
    let ids: BpeVocab = vocab
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i as u32))
        .collect();
    let build_error = |e: tokenizers::Error| tokenizer_error(file, e.to_string());
    let bpe = BPE::builder()
        .vocab_and_merges(ids, vocab.merges())
        .unk_token(unk.to_string())
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(build_error)?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(Replace::new(" ", SPACE).map_err(build_error)?));
    // Splitting on spaces after they became `▁` never splits: what transformers writes, kept
    // so the file reads like theirs.
    tokenizer.with_pre_tokenizer(Some(
        Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(build_error)?,
    ));
    tokenizer.with_decoder(Some(Sequence::new(vec![
        DecoderWrapper::Replace(Replace::new(SPACE, " ").map_err(build_error)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])));
    let add_bos = file.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true);
    if let (true, Some((bos_id, bos))) = (add_bos, vocab.special(file, "tokenizer.ggml.bos_token_id")?) {
        let template = TemplateProcessing::builder()
            .try_single(vec![bos.to_string(), "$A".into()])
            .and_then(|b| b.try_pair(vec![bos.to_string(), "$A".into(), format!("{bos}:1"), "$B:1".into()]))
            .map_err(|e| tokenizer_error(file, e.to_string()))?
            .special_tokens(vec![(bos.to_string(), bos_id)])
            .build()
            .map_err(|e| tokenizer_error(file, e.to_string()))?;
        tokenizer.with_post_processor(Some(template));
    }
    tokenizer.add_tokens(&vocab.added_tokens());
    Ok(tokenizer)
}

/// `tokenizer_config.json`: the special tokens and BOS/EOS conventions, and the chat template
/// if the file has one.
pub fn tokenizer_config(file: &GgufFile) -> Result<serde_json::Value> {
    let vocab = Vocab::read(file)?;
    let mut config = json!({
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": file.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true),
        "add_eos_token": file.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        "clean_up_tokenization_spaces": false,
    });
    let map = config.as_object_mut().expect("a JSON object literal");
    for (name, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ] {
        if let Some((_, piece)) = vocab.special(file, key)? {
            map.insert(name.into(), piece.into());
        }
    }
    if let Some(template) = file.get_str("tokenizer.chat_template")? {
        map.insert("chat_template".into(), template.into());
    }
    Ok(config)
}

/// `generation_config.json`: generation stops at EOS and, as in Google's own Gemma configs, at
/// the chat format's `<end_of_turn>`.
pub fn generation_config(file: &GgufFile) -> Result<serde_json::Value> {
    let vocab = Vocab::read(file)?;
    let mut stops = Vec::new();
    let end_of_turn = vocab.pieces.iter().position(|p| p == "<end_of_turn>");
    for id in [
        file.get_usize("tokenizer.ggml.eos_token_id")?,
        file.get_usize("tokenizer.ggml.eot_token_id")?,
        end_of_turn,
    ]
    .into_iter()
    .flatten()
    {
        if !stops.contains(&id) {
            stops.push(id);
        }
    }
    Ok(json!({
        "bos_token_id": file.get_usize("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": stops,
        "pad_token_id": file.get_usize("tokenizer.ggml.padding_token_id")?,
    }))
}

fn tokenizer_error(file: &GgufFile, message: String) -> ModelError {
    ModelError::Tokenizer {
        path: file.path().to_path_buf(),
        message,
    }
}
