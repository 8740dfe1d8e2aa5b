//! An Ollama `Modelfile` for a GGUF export: `FROM` the model, `ADAPTER` a LoRA GGUF, the model's
//! chat template as Ollama's `TEMPLATE` (Go's `text/template` over `.Messages`), and a
//! `PARAMETER stop` for each stop token.
//!
//! Jinja cannot be translated into Go's template language in general; chat templates of the
//! turn-based kind (Gemma's, and most others) can be stated exactly once their pieces are known.
//! The pieces are read by rendering the model's own template on probe conversations, and the
//! result is checked on a longer one, so a template of another shape is refused, not guessed.

use crate::chat::{ChatMessage, apply_chat_template};
use crate::error::DataError;

/// Probe contents: private-use characters no template adds, trims or escapes.
const USER: &str = "\u{E000}";
const ASSISTANT: &str = "\u{E001}";
const SYSTEM: &str = "\u{E002}";
const USER_2: &str = "\u{E003}";

/// How a template places a system message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum System {
    /// The template refuses one (Gemma 1's raises "System role not supported").
    Refused,
    /// Its text, then `separator`, opens the first user turn's content (Gemma 3).
    IntoFirstUser { separator: String },
    /// A turn of its own between `prefix` and `suffix`.
    OwnTurn { prefix: String, suffix: String },
}

/// The pieces of a turn-based chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Turns {
    /// Text before the first turn (`<bos>`), which llama.cpp and Ollama add as a token instead.
    start: String,
    user: (String, String),
    assistant: (String, String),
    /// The prompt for the model's turn (`add_generation_prompt`).
    generation: String,
    system: System,
}

impl Turns {
    /// The pieces of `template`, read by rendering it.
    fn read(template: &str, bos_token: &str, eos_token: &str) -> Result<Self, DataError> {
        let render = |messages: &[(&str, &str)], generation: bool| {
            let messages: Vec<ChatMessage> = messages.iter().map(|(r, c)| ChatMessage::new(r, c)).collect();
            apply_chat_template(template, &messages, bos_token, eos_token, generation)
        };
        let unfit = |what: &str| DataError::Template {
            message: format!(
                "the model's chat template is not a sequence of turns Ember can state as Ollama's Go \
                 template ({what}); write the Modelfile's TEMPLATE by hand"
            ),
        };
        let one = render(&[("user", USER)], false)?;
        let (lead, user_suffix) = one.split_once(USER).ok_or_else(|| unfit("a user turn"))?;
        let two = render(&[("user", USER), ("assistant", ASSISTANT)], false)?;
        let after_user = two.strip_prefix(&one).ok_or_else(|| unfit("an assistant turn"))?;
        let (assistant_prefix, assistant_suffix) = after_user
            .split_once(ASSISTANT)
            .ok_or_else(|| unfit("an assistant turn"))?;
        let three = render(&[("user", USER), ("assistant", ASSISTANT), ("user", USER_2)], false)?;
        let user_prefix = three
            .strip_prefix(&two)
            .and_then(|rest| rest.strip_suffix(&format!("{USER_2}{user_suffix}")))
            .ok_or_else(|| unfit("a second user turn"))?;
        let start = lead.strip_suffix(user_prefix).ok_or_else(|| unfit("the start"))?;
        let generation = render(&[("user", USER)], true)?;
        let generation = generation
            .strip_prefix(&one)
            .ok_or_else(|| unfit("the generation prompt"))?;
        let system = match render(&[("system", SYSTEM), ("user", USER)], false) {
            Err(_) => System::Refused,
            Ok(text) => {
                let into_user = text
                    .strip_prefix(&format!("{start}{user_prefix}{SYSTEM}"))
                    .and_then(|rest| rest.strip_suffix(&format!("{USER}{user_suffix}")));
                let own_turn = text
                    .strip_prefix(start)
                    .and_then(|rest| rest.strip_suffix(&format!("{user_prefix}{USER}{user_suffix}")))
                    .and_then(|turn| turn.split_once(SYSTEM));
                match (into_user, own_turn) {
                    (Some(separator), _) => System::IntoFirstUser {
                        separator: separator.into(),
                    },
                    (None, Some((prefix, suffix))) => System::OwnTurn {
                        prefix: prefix.into(),
                        suffix: suffix.into(),
                    },
                    (None, None) => return Err(unfit("a system message")),
                }
            }
        };
        let turns = Self {
            start: start.into(),
            user: (user_prefix.into(), user_suffix.into()),
            assistant: (assistant_prefix.into(), assistant_suffix.into()),
            generation: generation.into(),
            system,
        };
        // The pieces must compose to the template's own text of a longer conversation.
        let mut long = vec![
            ("user", "a"),
            ("assistant", "b"),
            ("user", "c"),
            ("assistant", "d"),
            ("user", "e"),
        ];
        if turns.system != System::Refused {
            long.insert(0, ("system", "s"));
        }
        if render(&long, true)? != turns.compose(&long) {
            return Err(unfit("its text of five turns is not its turns' text joined"));
        }
        Ok(turns)
    }

    /// The text these pieces give `messages`, with the generation prompt.
    fn compose(&self, messages: &[(&str, &str)]) -> String {
        let mut text = self.start.clone();
        let mut system = None;
        for &(role, content) in messages {
            match (role, &self.system) {
                ("system", System::IntoFirstUser { .. }) => system = Some(content),
                ("system", System::OwnTurn { prefix, suffix }) => text += &format!("{prefix}{content}{suffix}"),
                ("user", _) => {
                    text += &self.user.0;
                    if let (Some(s), System::IntoFirstUser { separator }) = (system.take(), &self.system) {
                        text += &format!("{s}{separator}");
                    }
                    text += &format!("{content}{}", self.user.1);
                }
                ("assistant", _) => text += &format!("{}{content}{}", self.assistant.0, self.assistant.1),
                _ => {}
            }
        }
        text + &self.generation
    }

    /// The same as a Go template over Ollama's `.Messages` (roles `system`, `user`,
    /// `assistant`), without [`Turns::start`]; the generation prompt follows unless the last
    /// message is the assistant's (Ollama then continues it).
    fn go_template(&self) -> String {
        let literal = |text: &str| format!("{{{{ {} }}}}", go_string(text));
        let system = match &self.system {
            System::Refused => "{{- /* the model's chat template has no system turn */ -}}\n".to_string(),
            System::IntoFirstUser { .. } => "{{- if eq .Role \"system\" }}{{ $system = .Content }}\n".to_string(),
            System::OwnTurn { prefix, suffix } => format!(
                "{{{{- if eq .Role \"system\" }}}}{}{{{{ .Content }}}}{}\n",
                literal(prefix),
                literal(suffix)
            ),
        };
        let (if_user, system_text) = match &self.system {
            System::Refused => ("{{- if eq .Role \"user\" }}", String::new()),
            System::IntoFirstUser { separator } => (
                "{{- else if eq .Role \"user\" }}",
                format!(
                    "{{{{ if $system }}}}{{{{ $system }}}}{}{{{{ $system = \"\" }}}}{{{{ end }}}}",
                    literal(separator)
                ),
            ),
            System::OwnTurn { .. } => ("{{- else if eq .Role \"user\" }}", String::new()),
        };
        // Only a system text folded into the first user turn needs remembering.
        let declare = match self.system {
            System::IntoFirstUser { .. } => "{{- $system := \"\" }}",
            _ => "",
        };
        format!(
            "{declare}{{{{- $role := \"\" }}}}\n\
             {{{{- range .Messages }}}}\n\
             {system}\
             {if_user}{}{system_text}{{{{ .Content }}}}{}\n\
             {{{{- else if eq .Role \"assistant\" }}}}{}{{{{ .Content }}}}{}\n\
             {{{{- end }}}}{{{{ $role = .Role }}}}\n\
             {{{{- end }}}}\n\
             {{{{- if ne $role \"assistant\" }}}}{}{{{{ end }}}}",
            literal(&self.user.0),
            literal(&self.user.1),
            literal(&self.assistant.0),
            literal(&self.assistant.1),
            literal(&self.generation),
        )
    }
}

/// `text` as a Go string literal (JSON's escapes are Go's).
fn go_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// The model's chat `template` (Jinja, rendered with `bos_token` and `eos_token` as
/// transformers does) as Ollama's Go `TEMPLATE`, and the text before the first turn that it
/// leaves to the tokenizer (Gemma's `<bos>`).
///
/// # Errors
///
/// A template that is not turn-based, or that fails to render a plain conversation.
pub fn ollama_template(template: &str, bos_token: &str, eos_token: &str) -> Result<(String, String), DataError> {
    let turns = Turns::read(template, bos_token, eos_token)?;
    Ok((turns.go_template(), turns.start))
}

/// An Ollama `Modelfile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modelfile {
    /// `FROM`: the GGUF file (or model) to run, relative to the Modelfile or absolute.
    pub from: String,
    /// `ADAPTER`: a LoRA GGUF over `from`.
    pub adapter: Option<String>,
    /// `TEMPLATE`: a Go template ([`ollama_template`]).
    pub template: Option<String>,
    /// `PARAMETER stop`, one each: the stop tokens' text.
    pub stops: Vec<String>,
}

impl Modelfile {
    /// The file's text.
    ///
    /// # Errors
    ///
    /// A template holding `"""`, which ends Ollama's multi-line value.
    pub fn render(&self) -> Result<String, DataError> {
        let mut text = String::from("# Written by `ember export`: `ollama create NAME -f Modelfile`.\n");
        text += &format!("FROM {}\n", self.from);
        if let Some(adapter) = &self.adapter {
            text += &format!("ADAPTER {adapter}\n");
        }
        if let Some(template) = &self.template {
            if template.contains("\"\"\"") {
                return Err(DataError::Template {
                    message: "the Ollama template holds \"\"\", which a Modelfile cannot quote".into(),
                });
            }
            text += &format!("TEMPLATE \"\"\"{template}\"\"\"\n");
        }
        for stop in &self.stops {
            text += &format!("PARAMETER stop {}\n", go_string(stop));
        }
        Ok(text)
    }
}
