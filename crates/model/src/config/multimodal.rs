//! Multimodal configs (`gemma3n`, `gemma4`, `gemma4_unified`): Ember runs their text decoder,
//! described by `text_config` and stored under `model.language_model` in the checkpoint. The
//! vision and audio towers are not loaded; their tensors are skipped by name and reported when
//! the checkpoint is read.

use std::path::Path;

use serde_json::{Map, Value};

use super::Fields;
use crate::error::Result;

/// The text decoder's part of a multimodal config.
pub(super) struct TextConfig {
    map: Map<String, Value>,
}

/// Keys of the multimodal wrapper that describe the towers Ember does not run or the files.
const WRAPPER_KEYS: &[&str] = &[
    "model_type",
    "text_config",
    "vision_config",
    "audio_config",
    "architectures",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "initializer_range",
    "tie_word_embeddings",
    "use_cache",
    "boi_token_id",
    "eoi_token_id",
    "boa_token_id",
    "eoa_token_id",
    "eoa_token_index",
    "image_token_id",
    "video_token_id",
    "audio_token_id",
    "vision_soft_tokens_per_image",
    "audio_soft_tokens_per_image",
    "mm_tokens_per_image",
    "processor_class",
];

impl Fields<'_> {
    /// The text part of a multimodal config, or `None` for a text model's config.
    pub(super) fn multimodal(&self) -> Result<Option<TextConfig>> {
        let text_type = match self.str("model_type")? {
            Some("gemma3n") => "gemma3n_text",
            Some("gemma4") => "gemma4_text",
            Some("gemma4_unified") => "gemma4_unified_text",
            _ => return Ok(None),
        };
        let mut map = match self.get("text_config") {
            Some(Value::Object(map)) => map.clone(),
            Some(other) => return Err(self.error("text_config", format!("expected an object, found {other}"))),
            None => return Err(self.error("text_config", "missing; Ember runs a multimodal model's text decoder")),
        };
        for key in self.map.keys().filter(|k| !WRAPPER_KEYS.contains(&k.as_str())) {
            tracing::warn!(
                "{}: key `{key}` is not used: Ember runs the text decoder",
                self.path.display()
            );
        }
        map.entry("model_type")
            .or_insert_with(|| Value::String(text_type.into()));
        // The saved dtype and the tying are stated once, at the top, by some writers.
        for key in ["dtype", "torch_dtype", "tie_word_embeddings"] {
            // transformers 5.17 writes `"dtype": null` into the sub-configs.
            if let Some(value) = self.get(key)
                && map.get(key).is_none_or(Value::is_null)
            {
                map.insert(key.into(), value.clone());
            }
        }
        Ok(Some(TextConfig { map }))
    }
}

/// A multimodal config's text part as a text model's own `config.json`: what an export of the
/// text decoder (which Ember's model is) carries, so transformers loads it as the text model's
/// `*ForCausalLM`. `None` for a text model's config.
pub(crate) fn standalone_text_config(config: &Value) -> Option<Value> {
    let map = config.as_object()?;
    let (text_type, class) = match map.get("model_type")?.as_str()? {
        "gemma3n" => ("gemma3n_text", "Gemma3nForCausalLM"),
        "gemma4" => ("gemma4_text", "Gemma4ForCausalLM"),
        "gemma4_unified" => ("gemma4_unified_text", "Gemma4UnifiedForCausalLM"),
        _ => return None,
    };
    let mut text = map.get("text_config")?.as_object()?.clone();
    text.insert("model_type".into(), Value::String(text_type.into()));
    text.insert("architectures".into(), Value::Array(vec![Value::String(class.into())]));
    for key in ["dtype", "torch_dtype", "tie_word_embeddings", "transformers_version"] {
        if let Some(value) = map.get(key)
            && !text.contains_key(key)
        {
            text.insert(key.into(), value.clone());
        }
    }
    Some(Value::Object(text))
}

impl TextConfig {
    pub(super) fn fields<'a>(&'a self, path: &'a Path) -> Fields<'a> {
        Fields {
            map: &self.map,
            path,
            key_prefix: "text_config.",
            module_prefix: "model.language_model",
        }
    }
}
