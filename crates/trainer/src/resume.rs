//! What a checkpoint must share with the run that resumes it: the base model, the tokenized
//! data and its batching, the adapter's settings and the optimizer. Everything that differs is
//! named in one error; other `[data]` and `[training]` changes are allowed and reported.

use std::path::Path;

use ember_lora::LoraConfig;
use ember_model::GemmaConfig;

use crate::checkpoint::TrainerState;
use crate::config::RunConfig;
use crate::error::{Result, TrainError};

/// What identifies the base model's architecture, from its config.json (or GGUF metadata), so
/// a directory converted from a GGUF file and the file itself are the same model.
pub fn model_signature(c: &GemmaConfig) -> String {
    format!(
        "{:?} layers={} hidden={} heads={}/{} head_dim={} vocab={}",
        c.family,
        c.num_hidden_layers(),
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size
    )
}

/// This run's side of the comparison.
pub struct Current<'a> {
    pub config: &'a RunConfig,
    pub signature: &'a str,
    /// The fingerprint of the tokenized training data and its batching options.
    pub data_fingerprint: u64,
    /// The ranks of this run.
    pub world_size: usize,
}

/// Refuses to resume `dir` (whose state is `state` and adapter settings `saved_lora`) when it
/// belongs to other settings, listing every difference.
pub fn check(dir: &Path, state: &TrainerState, saved_lora: &LoraConfig, current: &Current) -> Result<()> {
    let mut differences = Vec::new();
    if state.model_signature != current.signature {
        differences.push(format!(
            "model: the checkpoint was trained on {}, this config's model is {}",
            state.model_signature, current.signature
        ));
    }
    if state.loader.fingerprint != current.data_fingerprint {
        differences.push(
            "data: the tokenized training set or its batching differs (another data file or \
             contents, template, columns, max_seq_length, packing, batch size or tokenizer)"
                .to_string(),
        );
    }
    if state.loader.seed != current.config.data.seed {
        differences.push(format!(
            "data.seed: the checkpoint shuffled with {}, this config with {}",
            state.loader.seed, current.config.data.seed
        ));
    }
    for change in changed_keys(&saved_lora.to_json(), &current.config.lora.to_json()) {
        differences.push(format!("lora.{change}"));
    }
    if let Some(difference) = world_difference(state, current) {
        differences.push(difference);
    }
    let optim = format!("{:?}", current.config.training.optim);
    if state.optim != optim {
        differences.push(format!("optim: {} -> {optim}", state.optim));
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: format!(
            "it belongs to a run with other settings (checkpoint -> this config):\n  {}\n\
             resume with the settings it was trained with, or start a fresh run in another output_dir",
            differences.join("\n  ")
        ),
    })
}

/// A resume on another number of ranks goes on only where each step still covers the same
/// micro-batches (ranks × gradient_accumulation_steps): then the run is the same run.
fn world_difference(state: &TrainerState, current: &Current) -> Option<String> {
    let world = current.world_size;
    if state.world_size == world {
        return None;
    }
    let saved_accumulation = state.settings["training"]["gradient_accumulation_steps"]
        .as_u64()
        .unwrap_or(1) as usize;
    let saved = state.world_size * saved_accumulation;
    let accumulation = current.config.training.gradient_accumulation_steps;
    if saved == world * accumulation {
        return None;
    }
    let fix = match saved % world {
        0 => format!(
            "set gradient_accumulation_steps = {} for this world size",
            saved / world
        ),
        _ => format!("use a world size that divides {saved}"),
    };
    Some(format!(
        "ranks: the checkpoint's steps were {} rank(s) × gradient_accumulation_steps {saved_accumulation} = \
         {saved} micro-batches, this run's {world} × {accumulation} = {}; {fix}",
        state.world_size,
        world * accumulation
    ))
}

/// The settings a resume compares: `[data]` and `[training]`, as JSON.
pub fn run_settings(config: &RunConfig) -> serde_json::Value {
    serde_json::json!({
        "data": serde_json::to_value(&config.data).expect("data settings serialise"),
        "training": serde_json::to_value(&config.training).expect("training settings serialise"),
    })
}

/// `section.key: old -> new` for every setting that differs between two [`run_settings`].
/// Model, data, adapter and optimizer changes never get here: [`check`] refuses them.
pub fn changed_settings(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let mut changes = Vec::new();
    let Some(new_sections) = new.as_object() else {
        return changes;
    };
    for (section, new_values) in new_sections {
        changes.extend(
            changed_keys(&old[section], new_values)
                .into_iter()
                .map(|change| format!("{section}.{change}")),
        );
    }
    changes
}

/// `key: old -> new` for each key of `new` whose value differs in `old`, then each key only
/// `old` has.
fn changed_keys(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let null = serde_json::Value::Null;
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return Vec::new();
    };
    let mut changes: Vec<String> = new
        .iter()
        .filter(|(key, value)| old.get(*key).unwrap_or(&null) != *value)
        .map(|(key, value)| format!("{key}: {} -> {value}", old.get(key).unwrap_or(&null)))
        .collect();
    changes.extend(
        old.iter()
            .filter(|(key, value)| !new.contains_key(*key) && !value.is_null())
            .map(|(key, value)| format!("{key}: {value} -> null")),
    );
    changes
}
