//! Prompt templates: how a record becomes text, and which parts of it are the response.
//!
//! Every template yields *segments*: text, or a special token placed by id. Segments that
//! belong to the response are flagged; `train_on = "completion"` trains exactly those.
//! BOS is not part of any template: the tokenizer step puts exactly one in front.

use serde::{Deserialize, Serialize};

use crate::columns::Layout;
use crate::error::DataError;
use crate::record::{Record, Role, Turn};
use crate::tokenizer::Tokenizer;

/// The seed recipe's prompt, verbatim, with its three `{}` named. The seed formats a training
/// text as `prompt.format(instruction, input, output) + EOS_TOKEN`, so every sample ends with the
/// response, a newline, then EOS.
pub const ALPACA_SEED: &str = "Based on given instruction and input, generate an appropriate \
response\n### Instruction:\n{instruction}\n### Input:\n{input}\n### Response:\n{output}\n";

/// What the seed puts in the response slot when it asks a fine-tuned model:
/// `prompt.format(instruction, input, " ")`.
const SEED_ASK_RESPONSE: &str = " ";

/// The prompt a model fine-tuned on [`ALPACA_SEED`] is asked with, the seed's way: the whole
/// template with the response slot filled by a space (`...### Response:\n \n`). The text goes
/// in as given, braces included.
pub fn alpaca_seed_prompt(instruction: &str, input: &str) -> String {
    alpaca_seed_text(instruction, input, SEED_ASK_RESPONSE)
}

/// [`ALPACA_SEED`] filled in, as Python's `str.format` fills it (no placeholder inside the
/// inserted text is filled again).
pub fn alpaca_seed_text(instruction: &str, input: &str, output: &str) -> String {
    let (head, rest) = ALPACA_SEED
        .split_once("{instruction}")
        .expect("the template names {instruction}");
    let (middle, rest) = rest.split_once("{input}").expect("the template names {input}");
    let (before, after) = rest.split_once("{output}").expect("the template names {output}");
    format!("{head}{instruction}{middle}{input}{before}{output}{after}")
}

/// The `template` key of the `[data]` config.
///
/// * `"alpaca-seed"`: [`ALPACA_SEED`], then EOS. Needs instruction, input and output columns.
/// * `"gemma-chat"`: Gemma's chat format, exactly as its Hugging Face chat template writes it:
///   `<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n{content}<end_of_turn>\n`
///   with contents trimmed, a system message folded into the first user turn
///   (`{system}\n\n{user}`, as Gemma 3 does) and `assistant` written as `model`. Each model
///   turn ends with `<end_of_turn>`, the token Gemma chat models stop on, so it plays the role
///   of EOS and no `<eos>` is added. Works with chat columns and with prompt/completion (one
///   user turn, one model turn).
/// * `{ custom = "..." }`: your text with placeholders named after the logical columns:
///   `{instruction}`, `{input}`, `{output}` or `{prompt}`, `{completion}` (`{{` and `}}` are
///   literal braces). The response placeholder is the last placeholder; text after it (the
///   seed's closing `\n`) belongs to the response, and EOS follows. A leading `<bos>` and a
///   trailing `<eos>` are accepted and not doubled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum TemplateSpec {
    AlpacaSeed,
    GemmaChat,
    Custom(String),
}

impl TemplateSpec {
    /// The template used when the config names none.
    pub fn default_for(layout: &Layout) -> Self {
        match layout {
            Layout::Instruction { .. } => TemplateSpec::AlpacaSeed,
            Layout::PromptCompletion { .. } => TemplateSpec::Custom("{prompt}{completion}".into()),
            Layout::Messages { .. } | Layout::Conversations { .. } => TemplateSpec::GemmaChat,
        }
    }

    /// The prompt that asks a model trained in this format about `text`: the text as the
    /// instruction (empty input) or the user turn. `alpaca-seed` asks the seed's way
    /// ([`alpaca_seed_prompt`]); the others stop where the response would start. A custom
    /// template is read by the same parser as for training, so it must fit `layout`.
    pub fn prompt_for(&self, layout: &Layout, text: &str) -> Result<String, DataError> {
        Ok(match self {
            TemplateSpec::AlpacaSeed => alpaca_seed_prompt(text, ""),
            TemplateSpec::GemmaChat => format!(
                "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n",
                text.trim()
            ),
            TemplateSpec::Custom(template) => {
                let parts = parse(template, layout)?;
                let response = parts
                    .iter()
                    .rposition(|part| matches!(part, Part::Field(_)))
                    .expect("parse checks the response field");
                parts[..response]
                    .iter()
                    .map(|part| match part {
                        Part::Literal(literal) => literal.as_str(),
                        Part::Field(Field::Input) => "",
                        Part::Field(_) => text,
                    })
                    .collect()
            }
        })
    }

    /// A short name for reports.
    pub fn name(&self) -> &str {
        match self {
            TemplateSpec::AlpacaSeed => "alpaca-seed",
            TemplateSpec::GemmaChat => "gemma-chat",
            TemplateSpec::Custom(_) => "custom",
        }
    }

    /// Checks that the template fits the column layout, without a tokenizer.
    pub fn check(&self, layout: &Layout) -> Result<(), DataError> {
        match self {
            TemplateSpec::GemmaChat => match layout {
                Layout::Instruction { .. } => Err(template_error(
                    "gemma-chat needs chat columns (messages or conversations) or \
                     prompt/completion columns; instruction columns use \"alpaca-seed\" or a \
                     custom template",
                )),
                _ => Ok(()),
            },
            TemplateSpec::AlpacaSeed => {
                if let Layout::Instruction { input: None, .. } = layout {
                    return Err(template_error(
                        "alpaca-seed fills `### Input:` from an input column, and none is \
                         mapped; map columns.input or use a custom template without {input}",
                    ));
                }
                parse(ALPACA_SEED, layout).map(drop)
            }
            TemplateSpec::Custom(text) => parse(text, layout).map(drop),
        }
    }
}

/// A logical field a custom template can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Instruction,
    Input,
    Output,
    Prompt,
    Completion,
}

impl Field {
    const ALL: [(&'static str, Field); 5] = [
        ("instruction", Field::Instruction),
        ("input", Field::Input),
        ("output", Field::Output),
        ("prompt", Field::Prompt),
        ("completion", Field::Completion),
    ];

    fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, f)| *f == self).map_or("", |(n, _)| *n)
    }
}

/// The fields a layout provides, the response last.
fn fields_of(layout: &Layout) -> Vec<Field> {
    match layout {
        Layout::Instruction { input, .. } => {
            let mut fields = vec![Field::Instruction];
            if input.is_some() {
                fields.push(Field::Input);
            }
            fields.push(Field::Output);
            fields
        }
        Layout::PromptCompletion { .. } => vec![Field::Prompt, Field::Completion],
        Layout::Messages { .. } | Layout::Conversations { .. } => Vec::new(),
    }
}

/// A parsed custom template: literal text and fields, the response field the last field.
#[derive(Debug, PartialEq)]
enum Part {
    Literal(String),
    Field(Field),
}

fn parse(template: &str, layout: &Layout) -> Result<Vec<Part>, DataError> {
    let available = fields_of(layout);
    let Some(&response) = available.last() else {
        return Err(template_error(
            "a custom template needs instruction/output or prompt/completion columns; chat \
             columns use \"gemma-chat\"",
        ));
    };
    let template = template.strip_prefix("<bos>").unwrap_or(template);
    let template = template.strip_suffix("<eos>").unwrap_or(template);
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let field = Field::ALL
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, f)| *f)
                    .filter(|f| available.contains(f))
                    .ok_or_else(|| unknown_placeholder(&name, &available))?;
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Field(field));
            }
            '}' => {
                return Err(template_error(
                    "has a `}` that closes no placeholder; write `}}` for a literal brace",
                ));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    let last_field = parts.iter().rev().find(|part| matches!(part, Part::Field(_)));
    if last_field != Some(&Part::Field(response)) {
        return Err(template_error(&format!(
            "must have {{{}}} as its last placeholder: the response comes last in a sample (text \
             after it is part of the response), and EOS follows it",
            response.name()
        )));
    }
    for field in &available {
        let uses = parts.iter().filter(|p| **p == Part::Field(*field)).count();
        if uses == 0 {
            return Err(template_error(&format!(
                "never uses {{{0}}}, but [data.columns] maps `{0}`; use it in the template or \
                 drop it from the mapping",
                field.name()
            )));
        }
        if *field == response && uses > 1 {
            return Err(template_error(&format!(
                "uses {{{}}} more than once; the response appears once, at the end",
                field.name()
            )));
        }
    }
    Ok(parts)
}

fn unknown_placeholder(name: &str, available: &[Field]) -> DataError {
    let names: Vec<String> = available.iter().map(|f| format!("{{{}}}", f.name())).collect();
    template_error(&format!(
        "has placeholder {{{name}}}; the mapped columns give {} (write `{{{{` for a literal brace)",
        names.join(", ")
    ))
}

fn template_error(message: &str) -> DataError {
    DataError::Template {
        message: message.to_owned(),
    }
}

/// A piece of a rendered sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Text, tokenized together with the text segments around it.
    Text { text: String, response: bool },
    /// A special token, placed by id.
    Special { id: u32, response: bool },
}

/// A template bound to a tokenizer's special tokens, ready to render records.
#[derive(Debug)]
pub(crate) enum Formatter {
    /// Custom or alpaca-seed: literal text, special tokens and fields, then EOS.
    Fields { pieces: Vec<Piece>, eos: u32 },
    /// Gemma's chat format.
    GemmaChat { start_of_turn: u32, end_of_turn: u32 },
}

#[derive(Debug)]
pub(crate) enum Piece {
    Text(String),
    Special(u32),
    Field(Field),
}

impl Formatter {
    /// Checks `spec` against `layout` and binds it to `tokenizer`'s special tokens.
    pub fn new(spec: &TemplateSpec, layout: &Layout, tokenizer: &Tokenizer) -> Result<Self, DataError> {
        spec.check(layout)?;
        let text = match spec {
            TemplateSpec::GemmaChat => {
                let id = |token: &str| {
                    tokenizer.token_id(token).ok_or(DataError::MissingToken {
                        token: token.to_owned(),
                        needed_for: "the gemma-chat template needs a Gemma tokenizer",
                    })
                };
                return Ok(Formatter::GemmaChat {
                    start_of_turn: id("<start_of_turn>")?,
                    end_of_turn: id("<end_of_turn>")?,
                });
            }
            TemplateSpec::AlpacaSeed => ALPACA_SEED,
            TemplateSpec::Custom(text) => text,
        };
        let mut pieces = Vec::new();
        for part in parse(text, layout)? {
            match part {
                Part::Field(field) => pieces.push(Piece::Field(field)),
                Part::Literal(literal) => split_specials(&literal, tokenizer, &mut pieces)?,
            }
        }
        Ok(Formatter::Fields {
            pieces,
            eos: tokenizer.eos_id(),
        })
    }

    /// The segments of `record`, whose layout matches the one this formatter was built for.
    pub fn render(&self, record: Record) -> Vec<Segment> {
        match self {
            Formatter::Fields { pieces, eos } => render_fields(pieces, *eos, &record),
            Formatter::GemmaChat {
                start_of_turn,
                end_of_turn,
            } => {
                let turns = match record {
                    Record::Chat(turns) => turns,
                    Record::PromptCompletion { prompt, completion } => vec![
                        Turn {
                            role: Role::User,
                            content: prompt,
                        },
                        Turn {
                            role: Role::Model,
                            content: completion,
                        },
                    ],
                    // `check` rejects gemma-chat for instruction columns.
                    Record::Instruction { .. } => Vec::new(),
                };
                render_chat(turns, *start_of_turn, *end_of_turn)
            }
        }
    }
}

/// Splits literal template text at special tokens (`<start_of_turn>` ...). `<bos>` and `<eos>`
/// are placed by the pipeline; anywhere but the template's edges they are an error.
fn split_specials(literal: &str, tokenizer: &Tokenizer, out: &mut Vec<Piece>) -> Result<(), DataError> {
    let mut text = String::new();
    let mut rest = literal;
    while let Some(c) = rest.chars().next() {
        let special = tokenizer
            .specials()
            .iter()
            .find(|(content, _)| rest.starts_with(content.as_str()));
        match special {
            Some((content, id)) => {
                if *id == tokenizer.bos_id() || *id == tokenizer.eos_id() {
                    return Err(template_error(&format!(
                        "holds `{content}` inside the text; BOS starts every sample and EOS \
                         follows the response by themselves"
                    )));
                }
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(Piece::Special(*id));
                rest = &rest[content.len()..];
            }
            None => {
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(())
}

fn render_fields(pieces: &[Piece], eos: u32, record: &Record) -> Vec<Segment> {
    // Text after the response field (the seed's closing `\n`) is the model's to write, as EOS is.
    let mut in_response = false;
    let mut segments: Vec<Segment> = pieces
        .iter()
        .map(|piece| match piece {
            Piece::Text(text) => Segment::Text {
                text: text.clone(),
                response: in_response,
            },
            Piece::Special(id) => Segment::Special {
                id: *id,
                response: in_response,
            },
            Piece::Field(field) => {
                in_response = matches!(field, Field::Output | Field::Completion);
                Segment::Text {
                    text: field_text(record, *field).to_owned(),
                    response: in_response,
                }
            }
        })
        .collect();
    segments.push(Segment::Special {
        id: eos,
        response: true,
    });
    segments
}

/// The text of `field` in `record`; `parse` admits only the fields of the record's layout.
fn field_text(record: &Record, field: Field) -> &str {
    match (record, field) {
        (Record::Instruction { instruction, .. }, Field::Instruction) => instruction,
        (Record::Instruction { input, .. }, Field::Input) => input.as_deref().unwrap_or_default(),
        (Record::Instruction { output, .. }, Field::Output) => output,
        (Record::PromptCompletion { prompt, .. }, Field::Prompt) => prompt,
        (Record::PromptCompletion { completion, .. }, Field::Completion) => completion,
        _ => "",
    }
}

fn render_chat(turns: Vec<Turn>, start_of_turn: u32, end_of_turn: u32) -> Vec<Segment> {
    let mut segments = Vec::with_capacity(turns.len() * 5);
    let mut system_prefix = None;
    for turn in turns {
        if turn.role == Role::System {
            system_prefix = Some(turn.content + "\n\n");
            continue;
        }
        let response = turn.role == Role::Model;
        let prefix = system_prefix.take().unwrap_or_default();
        segments.push(Segment::Special {
            id: start_of_turn,
            response: false,
        });
        segments.push(Segment::Text {
            text: format!("{}\n{prefix}", turn.role.name()),
            response: false,
        });
        segments.push(Segment::Text {
            text: turn.content.trim().to_owned(),
            response,
        });
        segments.push(Segment::Special {
            id: end_of_turn,
            response,
        });
        segments.push(Segment::Text {
            text: "\n".to_owned(),
            response: false,
        });
    }
    segments
}
