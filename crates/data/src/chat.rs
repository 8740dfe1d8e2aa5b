//! A model's own chat template (Jinja, from `tokenizer_config.json`, `chat_template.jinja` or
//! a GGUF's metadata), rendered as transformers' `apply_chat_template` renders it: Jinja with
//! `trim_blocks` and `lstrip_blocks`, the template's `raise_exception`, `bos_token` and
//! `eos_token` as text.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;

use crate::error::DataError;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The text of `messages` in `template`, ending with the prompt for the model's turn when
/// `add_generation_prompt` is set. An error the template raises (`raise_exception`, e.g. a
/// role it does not support) is returned with its message.
pub fn apply_chat_template(
    template: &str,
    messages: &[ChatMessage],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
) -> Result<String, DataError> {
    let failed = |e: Error| DataError::Template {
        message: format!("the model's chat template: {e}"),
    };
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |message: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, message))
    });
    env.add_template("chat", template).map_err(failed)?;
    let rendered = env
        .get_template("chat")
        .and_then(|t| {
            t.render(context! {
                messages => messages,
                bos_token => bos_token,
                eos_token => eos_token,
                add_generation_prompt => add_generation_prompt,
            })
        })
        .map_err(failed)?;
    Ok(rendered)
}
