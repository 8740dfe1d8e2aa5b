//! Gemma's own chat templates (the instruction-tuned models' `tokenizer_config.json`, real
//! assets), rendered as transformers renders them.

use ember_data::{ChatMessage, apply_chat_template};

use crate::common::asset;

/// Python (transformers 5.24, 2026-12-02): `PreTrainedTokenizerFast(tokenizer_file=...,
/// chat_template=..., bos_token=..., eos_token=...).apply_chat_template(messages,
/// tokenize=False, add_generation_prompt=True)`.
const ONE_TURN: &str = "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n";
const GEMMA3_SYSTEM_AND_TURNS: &str = "<bos><start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n\
     <start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n";

fn template(name: &str) -> Option<String> {
    let path = asset(&format!("tokenizers/{name}/tokenizer_config.json"))?;
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    Some(config["chat_template"].as_str().expect("a chat template").to_string())
}

fn render(template: &str, messages: &[ChatMessage]) -> Result<String, ember_data::DataError> {
    apply_chat_template(template, messages, "<bos>", "<eos>", true)
}

#[test]
fn gemma_chat_templates_render_as_transformers_renders_them() {
    let (Some(gemma), Some(gemma3)) = (template("gemma"), template("gemma3")) else {
        return;
    };
    let one = [ChatMessage::new("user", "What is 2+2?")];
    assert_eq!(render(&gemma, &one).unwrap(), ONE_TURN);
    assert_eq!(render(&gemma3, &one).unwrap(), ONE_TURN);

    let turns = [
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "  Hi!\n"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Bye"),
    ];
    assert_eq!(render(&gemma3, &turns).unwrap(), GEMMA3_SYSTEM_AND_TURNS);
    // Gemma 1's template raises on a system turn, as it does in transformers.
    let err = render(&gemma, &turns).unwrap_err().to_string();
    assert!(err.contains("System role not supported"), "{err}");
}

#[test]
fn a_broken_template_is_an_error_not_a_panic() {
    let err = render("{% for %}", &[ChatMessage::new("user", "x")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("chat template"), "{err}");
}
