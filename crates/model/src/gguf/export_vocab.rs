//! A model's tokenizer as the `tokenizer.*` metadata llama.cpp reads.
//!
//! A GGUF base already holds it and is copied verbatim. From a checkpoint directory the
//! `tokenizer.json` is written as `convert_hf_to_gguf.py` writes that kind of tokenizer: a
//! byte-level BPE as llama.cpp's `gpt2` vocabulary with merges. Gemma's own SentencePiece-style
//! BPE is refused from a directory: llama.cpp's `llama` vocabulary ranks merges by the scores of
//! `tokenizer.model`, which `tokenizer.json` lacks, and a rebuild has not been checked against
//! llama.cpp; a GGUF base's tokenizer is copied instead. The chat template and special tokens
//! come from `tokenizer_config.json`.

use std::path::Path;

use serde_json::Value as Json;

use super::reader::{GgufFile, Value};
use crate::config::GemmaConfig;
use crate::error::{ModelError, Result};
use crate::source::{dir_chat_template, read_json, special_token};

/// llama.cpp's token types (`llama_token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The `tokenizer.*` keys of a GGUF base, as they are.
pub(super) fn copied_vocab(file: &GgufFile) -> Vec<(String, Value)> {
    file.metadata()
        .filter(|(key, _)| key.starts_with("tokenizer."))
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect()
}

/// The `tokenizer.*` keys for the checkpoint directory `dir` with `config`.
pub(super) fn vocab_of_dir(dir: &Path, config: &GemmaConfig) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    let error = |message: String| ModelError::Tokenizer {
        path: path.clone(),
        message,
    };
    let tokenizer = read_json(&path)?.ok_or_else(|| error("missing; the GGUF file embeds the tokenizer".into()))?;
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let model = &tokenizer["model"];
    if model["type"] != "BPE" {
        return Err(error(format!(
            "model type {}; Ember exports BPE tokenizers (Gemma's)",
            model["type"]
        )));
    }
    if model["byte_fallback"] == true || tokenizer["pre_tokenizer"]["type"] != "ByteLevel" {
        return Err(error(
            "model.byte_fallback / pre_tokenizer: not a byte-level BPE; Gemma's SentencePiece-style \
             vocabulary is exported only from its GGUF file (convert it once with llama.cpp, then \
             `ember export --model model.gguf`), which embeds it as it is"
                .into(),
        ));
    }

    // Pieces by id: the BPE vocabulary, then added tokens, then padding up to the embedding.
    let mut pieces: Vec<Option<String>> = vec![None; config.vocab_size];
    let mut types = vec![NORMAL; config.vocab_size];
    let mut place = |id: u64, piece: &str, kind: i32| -> Result<()> {
        let slot = pieces.get_mut(id as usize).ok_or_else(|| {
            error(format!(
                "token `{piece}` has id {id}, outside the model's {} embeddings",
                config.vocab_size
            ))
        })?;
        *slot = Some(piece.to_string());
        types[id as usize] = kind;
        Ok(())
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| error("model.vocab is not an object".into()))?;
    for (piece, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| error(format!("model.vocab[{piece:?}] is not an id")))?;
        place(id, piece, NORMAL)?;
    }
    let unk = special_token(tokenizer_config.get("unk_token")).or(model["unk_token"].as_str());
    for added in tokenizer["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(piece)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(error(format!("added token {added} has no id or content")));
        };
        let kind = match added["special"] == true {
            true if Some(piece) == unk => UNKNOWN,
            true => CONTROL,
            false => USER_DEFINED,
        };
        place(id, piece, kind)?;
    }
    let merges = merges(&model["merges"]).map_err(error)?;

    let id_of = |piece: &str| vocab.get(piece).and_then(Json::as_u64);
    let mut metadata = Vec::new();
    metadata.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
    metadata.push(("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())));
    let merges = merges.iter().map(|(l, r)| Value::String(format!("{l} {r}")));
    metadata.push(("tokenizer.ggml.merges".into(), Value::Array(merges.collect())));
    let tokens = pieces
        .iter()
        .zip(&mut types)
        .enumerate()
        .map(|(id, (piece, kind))| match piece {
            Some(piece) => Value::String(piece.clone()),
            None => {
                *kind = UNUSED;
                Value::String(format!("[PAD{id}]"))
            }
        });
    let tokens: Vec<Value> = tokens.collect();
    metadata.push(("tokenizer.ggml.tokens".into(), Value::Array(tokens)));
    metadata.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    ));

    let special = |name: &str, fallback: Option<u32>| {
        special_token(tokenizer_config.get(name))
            .and_then(|piece| id_of(piece).or_else(|| added_id(&tokenizer, piece)))
            .map(|id| id as u32)
            .or(fallback)
    };
    for (key, id) in [
        ("bos_token_id", special("bos_token", config.bos_token_id)),
        (
            "eos_token_id",
            special("eos_token", config.eos_token_ids.first().copied()),
        ),
        (
            "unknown_token_id",
            unk.and_then(|u| id_of(u).or_else(|| added_id(&tokenizer, u)))
                .map(|id| id as u32),
        ),
        ("padding_token_id", special("pad_token", config.pad_token_id)),
    ] {
        if let Some(id) = id {
            metadata.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    let flag = |name: &str, default: bool| tokenizer_config.get(name).and_then(Json::as_bool).unwrap_or(default);
    metadata.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(flag("add_bos_token", true)),
    ));
    metadata.push((
        "tokenizer.ggml.add_eos_token".into(),
        Value::Bool(flag("add_eos_token", false)),
    ));
    if let Some(template) = dir_chat_template(dir, &tokenizer_config)? {
        metadata.push(("tokenizer.chat_template".into(), Value::String(template)));
    }
    Ok(metadata)
}

fn added_id(tokenizer: &Json, piece: &str) -> Option<u64> {
    tokenizer["added_tokens"]
        .as_array()?
        .iter()
        .find(|t| t["content"] == piece)
        .and_then(|t| t["id"].as_u64())
}

/// `model.merges`, written as `"a b"` (older files) or `["a", "b"]`.
fn merges(value: &Json) -> std::result::Result<Vec<(String, String)>, String> {
    let Some(items) = value.as_array() else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|item| match item {
            Json::String(s) => s
                .split_once(' ')
                .map(|(l, r)| (l.to_string(), r.to_string()))
                .ok_or_else(|| format!("merge {s:?} is not two pieces")),
            Json::Array(pair) => match (pair.first().and_then(Json::as_str), pair.get(1).and_then(Json::as_str)) {
                (Some(l), Some(r)) if pair.len() == 2 => Ok((l.to_string(), r.to_string())),
                _ => Err(format!("merge {item} is not two pieces")),
            },
            other => Err(format!("merge {other} is not two pieces")),
        })
        .collect()
}
