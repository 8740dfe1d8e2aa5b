//! Column mapping: which columns of the file hold the instruction, the response or the chat.

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// The `[data.columns]` table: logical field = column name in the file.
///
/// Give the keys of exactly one layout; a key that is left out is not read:
///
/// | layout | keys | default |
/// |---|---|---|
/// | instruction | `instruction`, `input` (optional), `output` | all three, named as the keys (the seed's columns) |
/// | prompt/completion | `prompt`, `completion` | — |
/// | chat | `messages` (a list of `{role, content}`) | — |
/// | ShareGPT | `conversations` (a list of `{from, value}`) | — |
///
/// An empty table means the instruction layout with its default names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    /// Column holding the instruction (instruction layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// Column holding the optional input/context (instruction layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Column holding the response (instruction layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Column holding the prompt (prompt/completion layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Column holding the completion (prompt/completion layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
    /// Column holding `[{role, content}]` chat messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<String>,
    /// Column holding ShareGPT `[{from, value}]` turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversations: Option<String>,
}

/// A resolved column mapping: one layout and its column names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Instruction, optional input, and output columns.
    Instruction {
        instruction: String,
        input: Option<String>,
        output: String,
    },
    /// Prompt and completion columns.
    PromptCompletion { prompt: String, completion: String },
    /// One column of `[{role, content}]` messages.
    Messages { column: String },
    /// One column of ShareGPT `[{from, value}]` turns.
    Conversations { column: String },
}

impl Columns {
    /// Resolves the mapping into one layout, or says which keys clash or are missing.
    pub fn layout(&self) -> Result<Layout, DataError> {
        let given = |keys: &[(&'static str, &Option<String>)]| -> Vec<&'static str> {
            keys.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k).collect()
        };
        let instruction = given(&[
            ("instruction", &self.instruction),
            ("input", &self.input),
            ("output", &self.output),
        ]);
        let prompt = given(&[("prompt", &self.prompt), ("completion", &self.completion)]);
        let chat = given(&[("messages", &self.messages), ("conversations", &self.conversations)]);
        let layouts: Vec<&[&str]> = [&instruction[..], &prompt[..], &chat[..]]
            .into_iter()
            .filter(|keys| !keys.is_empty())
            .collect();
        if layouts.len() > 1 || chat.len() > 1 {
            let keys: Vec<&str> = layouts.concat();
            return Err(clash(&keys));
        }
        if let Some(column) = &self.messages {
            return Ok(Layout::Messages { column: column.clone() });
        }
        if let Some(column) = &self.conversations {
            return Ok(Layout::Conversations { column: column.clone() });
        }
        if !prompt.is_empty() {
            return match (&self.prompt, &self.completion) {
                (Some(prompt), Some(completion)) => Ok(Layout::PromptCompletion {
                    prompt: prompt.clone(),
                    completion: completion.clone(),
                }),
                (None, _) => Err(missing_key("prompt")),
                (_, None) => Err(missing_key("completion")),
            };
        }
        if instruction.is_empty() {
            return Ok(Layout::Instruction {
                instruction: "instruction".into(),
                input: Some("input".into()),
                output: "output".into(),
            });
        }
        match (&self.instruction, &self.output) {
            (Some(instruction), Some(output)) => Ok(Layout::Instruction {
                instruction: instruction.clone(),
                input: self.input.clone(),
                output: output.clone(),
            }),
            (None, _) => Err(missing_key("instruction")),
            (_, None) => Err(missing_key("output")),
        }
    }
}

fn clash(keys: &[&str]) -> DataError {
    DataError::Config {
        key: "columns",
        message: format!(
            "mixes the keys {} of different layouts; give either instruction/input/output, \
             prompt/completion, messages, or conversations",
            keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn missing_key(key: &str) -> DataError {
    DataError::Config {
        key: "columns",
        message: format!("needs `{key}` as well (the column that holds the {key})"),
    }
}

impl Layout {
    /// The top-level columns a record of this layout reads, in a fixed order.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Layout::Instruction {
                instruction,
                input,
                output,
            } => {
                let mut cols = vec![instruction.as_str()];
                cols.extend(input.as_deref());
                cols.push(output);
                cols
            }
            Layout::PromptCompletion { prompt, completion } => vec![prompt, completion],
            Layout::Messages { column } | Layout::Conversations { column } => vec![column],
        }
    }

    /// Whether records of this layout are conversations.
    pub fn is_chat(&self) -> bool {
        matches!(self, Layout::Messages { .. } | Layout::Conversations { .. })
    }
}
