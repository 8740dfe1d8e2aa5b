//! One training example, extracted from a raw record through the column mapping.
//!
//! Every reader turns its rows into JSON objects (`serde_json::Map`), so extraction, type
//! checks and error messages are the same for every format.

use serde_json::{Map, Value};

use crate::columns::Layout;
use crate::error::{DataError, Location};

/// A training example with its text in logical fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Instruction layout; `input` is `None` when no input column is mapped.
    Instruction {
        instruction: String,
        input: Option<String>,
        output: String,
    },
    /// Prompt/completion layout.
    PromptCompletion { prompt: String, completion: String },
    /// A conversation: an optional leading system turn, then user and model turns alternating,
    /// starting with the user.
    Chat(Vec<Turn>),
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

/// Who speaks a turn. `assistant` and ShareGPT's `gpt` are written as Gemma's `model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Model,
}

impl Role {
    /// The role as Gemma's chat format writes it.
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Model => "model",
        }
    }
}

impl Record {
    /// Extracts the mapped columns of `object`; `location` names the record in errors.
    pub fn from_json(mut object: Map<String, Value>, layout: &Layout, location: &Location) -> Result<Self, DataError> {
        let mut text = |column: &str| take_text(&mut object, column, location);
        Ok(match layout {
            Layout::Instruction {
                instruction,
                input,
                output,
            } => Record::Instruction {
                instruction: text(instruction)?,
                input: input.as_deref().map(&mut text).transpose()?,
                output: text(output)?,
            },
            Layout::PromptCompletion { prompt, completion } => Record::PromptCompletion {
                prompt: text(prompt)?,
                completion: text(completion)?,
            },
            Layout::Messages { column } => {
                let turns = take_list(&mut object, column, location)?;
                Record::Chat(chat_turns(turns, column, location, &MESSAGES)?)
            }
            Layout::Conversations { column } => {
                let turns = take_list(&mut object, column, location)?;
                Record::Chat(chat_turns(turns, column, location, &SHAREGPT)?)
            }
        })
    }
}

/// Removes `column` from `object` as text, or names what is missing or mistyped.
fn take_text(object: &mut Map<String, Value>, column: &str, location: &Location) -> Result<String, DataError> {
    match take(object, column, location)? {
        Value::String(s) => Ok(s),
        other => Err(wrong_type(location, column, "text", &other)),
    }
}

fn take_list(object: &mut Map<String, Value>, column: &str, location: &Location) -> Result<Vec<Value>, DataError> {
    match take(object, column, location)? {
        Value::Array(items) => Ok(items),
        other => Err(wrong_type(location, column, "a list of turns", &other)),
    }
}

fn take(object: &mut Map<String, Value>, column: &str, location: &Location) -> Result<Value, DataError> {
    object.remove(column).ok_or_else(|| DataError::MissingColumn {
        location: location.clone(),
        column: column.to_owned(),
        available: object.keys().cloned().collect(),
    })
}

pub(crate) fn wrong_type(location: &Location, column: &str, expected: &'static str, found: &Value) -> DataError {
    let found = match found {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(_) => "text".to_owned(),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    };
    DataError::WrongType {
        location: location.clone(),
        column: column.to_owned(),
        expected,
        found,
    }
}

/// The keys and role names of one chat format.
struct ChatKeys {
    role: &'static str,
    content: &'static str,
    roles: &'static [(&'static str, Role)],
}

const MESSAGES: ChatKeys = ChatKeys {
    role: "role",
    content: "content",
    roles: &[
        ("system", Role::System),
        ("user", Role::User),
        ("assistant", Role::Model),
        ("model", Role::Model),
    ],
};

const SHAREGPT: ChatKeys = ChatKeys {
    role: "from",
    content: "value",
    roles: &[
        ("system", Role::System),
        ("human", Role::User),
        ("user", Role::User),
        ("gpt", Role::Model),
        ("assistant", Role::Model),
        ("model", Role::Model),
    ],
};

fn chat_turns(items: Vec<Value>, column: &str, location: &Location, keys: &ChatKeys) -> Result<Vec<Turn>, DataError> {
    let mut turns = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let field = format!("{column}[{i}]");
        let mut object = match item {
            Value::Object(o) => o,
            other => return Err(wrong_type(location, &field, "an object", &other)),
        };
        let keys_present = present(&object, &field);
        let role_field = format!("{field}.{}", keys.role);
        let role_name = match object.remove(keys.role) {
            Some(Value::String(s)) => s,
            Some(other) => return Err(wrong_type(location, &role_field, "text", &other)),
            None => return Err(missing(location, &field, keys.role, keys_present)),
        };
        let role = keys
            .roles
            .iter()
            .find(|(name, _)| *name == role_name)
            .map(|(_, role)| *role)
            .ok_or_else(|| conversation_error(location, unknown_role(&role_field, &role_name, keys)))?;
        let content_field = format!("{field}.{}", keys.content);
        let content = match object.remove(keys.content) {
            Some(Value::String(s)) => s,
            Some(Value::Array(parts)) => text_parts(parts, &content_field, location)?,
            Some(other) => return Err(wrong_type(location, &content_field, "text", &other)),
            None => return Err(missing(location, &field, keys.content, keys_present)),
        };
        turns.push(Turn { role, content });
    }
    check_order(&turns, column).map_err(|m| conversation_error(location, m))?;
    Ok(turns)
}

/// Joins `[{type: "text", text | value}]` content parts, each trimmed as Gemma 3's template
/// does; any other part type is an error (this pipeline trains on text only).
fn text_parts(parts: Vec<Value>, field: &str, location: &Location) -> Result<String, DataError> {
    let mut joined = String::new();
    for (i, part) in parts.into_iter().enumerate() {
        let part_field = format!("{field}[{i}]");
        let mut object = match part {
            Value::Object(o) => o,
            other => return Err(wrong_type(location, &part_field, "a text part", &other)),
        };
        let keys_present = present(&object, &part_field);
        match object.remove("type") {
            Some(Value::String(t)) if t == "text" => {}
            Some(other) => {
                let kind = match &other {
                    Value::String(kind) => kind.clone(),
                    value => value.to_string(),
                };
                return Err(conversation_error(
                    location,
                    format!("`{part_field}` is a `{kind}` part; only text parts can be trained on"),
                ));
            }
            None => return Err(missing(location, &part_field, "type", keys_present)),
        }
        let text = match object.remove("text").or_else(|| object.remove("value")) {
            Some(Value::String(s)) => s,
            Some(other) => return Err(wrong_type(location, &part_field, "text", &other)),
            None => return Err(missing(location, &part_field, "text", keys_present)),
        };
        joined.push_str(text.trim());
    }
    Ok(joined)
}

fn check_order(turns: &[Turn], column: &str) -> Result<(), String> {
    let dialogue = match turns.first() {
        None => return Err(format!("`{column}` is an empty conversation")),
        Some(Turn { role: Role::System, .. }) => &turns[1..],
        Some(_) => turns,
    };
    if dialogue.is_empty() {
        return Err(format!("`{column}` holds a system message and no user turn"));
    }
    for (i, turn) in dialogue.iter().enumerate() {
        let expected = if i % 2 == 0 { Role::User } else { Role::Model };
        if turn.role != expected {
            let index = i + turns.len() - dialogue.len();
            return Err(format!(
                "`{column}[{index}]` is a {} turn where a {} turn is expected: after an \
                 optional system message, turns must alternate user/assistant starting with user",
                turn.role.name(),
                expected.name()
            ));
        }
    }
    Ok(())
}

fn unknown_role(field: &str, name: &str, keys: &ChatKeys) -> String {
    let known: Vec<String> = keys.roles.iter().map(|(n, _)| format!("`{n}`")).collect();
    format!(
        "`{field}` is `{name}`; known roles are {} (tool and function turns are not supported)",
        known.join(", ")
    )
}

/// The keys of a nested object, written as `field.key` for error messages.
fn present(object: &Map<String, Value>, field: &str) -> Vec<String> {
    object.keys().map(|k| format!("{field}.{k}")).collect()
}

fn missing(location: &Location, field: &str, key: &str, available: Vec<String>) -> DataError {
    DataError::MissingColumn {
        location: location.clone(),
        column: format!("{field}.{key}"),
        available,
    }
}

fn conversation_error(location: &Location, message: String) -> DataError {
    DataError::Conversation {
        location: location.clone(),
        message,
    }
}
