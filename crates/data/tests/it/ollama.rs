//! The Ollama TEMPLATE Ember derives from a model's chat template, rendered by Go's own
//! text/template (as Ollama renders it), gives the text of the model's Jinja template (as
//! transformers renders it) for the same conversation: Gemma 1's and Gemma 3's real templates.

use ember_data::{ChatMessage, Modelfile, apply_chat_template, ollama_template};

use crate::common::asset;

fn template(name: &str) -> Option<String> {
    let path = asset(&format!("tokenizers/{name}/tokenizer_config.json"))?;
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    Some(config["chat_template"].as_str().expect("a chat template").to_string())
}

/// Conversations as (role, content); contents without outer whitespace, which Gemma's
/// templates trim and Go's text/template has no function for.
fn conversations(system: bool) -> Vec<Vec<(&'static str, &'static str)>> {
    let mut all = vec![
        vec![("user", "What is 2+2?")],
        vec![
            ("user", "Write a haiku\nabout rust 🦀."),
            ("assistant", "Red flakes on iron;\nthe bridge {{ remembers }} the rain."),
            ("user", "Now in \"French\", <please>."),
        ],
        vec![
            ("user", "a"),
            ("assistant", "b"),
            ("user", "c"),
            ("assistant", "d"),
            ("user", "e"),
        ],
    ];
    if system {
        all.push(vec![
            ("system", "You are terse."),
            ("user", "Hi!"),
            ("assistant", "Hello."),
            ("user", "Bye"),
        ]);
    }
    all
}

#[test]
fn the_ollama_template_renders_as_the_models_chat_template() {
    for (name, system) in [("gemma", false), ("gemma3", true)] {
        let Some(jinja) = template(name) else {
            return;
        };
        let (go, start) = ollama_template(&jinja, "<bos>", "<eos>").unwrap();
        assert_eq!(start, "<bos>", "{name}");
        let conversations = conversations(system);
        let data: Vec<serde_json::Value> = conversations
            .iter()
            .map(|c| {
                let messages: Vec<_> = c
                    .iter()
                    .map(|(role, content)| serde_json::json!({"Role": role, "Content": content}))
                    .collect();
                serde_json::json!({"Messages": messages})
            })
            .collect();
        let Some(rendered) = ember_testkit::go_template::render(&go, &data) else {
            return;
        };
        assert_eq!(rendered.len(), conversations.len());
        for (conversation, ours) in conversations.iter().zip(rendered) {
            let messages: Vec<ChatMessage> = conversation.iter().map(|(r, c)| ChatMessage::new(r, c)).collect();
            let want = apply_chat_template(&jinja, &messages, "<bos>", "<eos>", true).unwrap();
            assert_eq!(format!("{start}{ours}"), want, "{name}: {conversation:?}\n{go}");
        }
        eprintln!(
            "{name}: {} conversations, the same text; the template:\n{go}",
            conversations.len()
        );
    }
}

/// Gemma 3's template, shortened to its turn logic.
const GEMMA3_LIKE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

#[test]
fn a_gemma_template_becomes_its_turns_in_go() {
    let (go, start) = ollama_template(GEMMA3_LIKE, "<bos>", "<eos>").unwrap();
    assert_eq!(start, "<bos>");
    for piece in [
        r#"{{- if eq .Role "system" }}{{ $system = .Content }}"#,
        r#"{{- else if eq .Role "user" }}{{ "<start_of_turn>user\n" }}{{ if $system }}{{ $system }}{{ "\n\n" }}"#,
        r#"{{ .Content }}{{ "<end_of_turn>\n" }}"#,
        r#"{{- else if eq .Role "assistant" }}{{ "<start_of_turn>model\n" }}"#,
        r#"{{- if ne $role "assistant" }}{{ "<start_of_turn>model\n" }}{{ end }}"#,
    ] {
        assert!(go.contains(piece), "{piece} in\n{go}");
    }
}

#[test]
fn a_template_that_is_not_turn_based_is_refused() {
    // Numbers its turns: its five-turn text is not its turns' text joined.
    let numbered = "{% for m in messages %}{{ loop.index }}:{{ m['content'] }};{% endfor %}";
    let err = ollama_template(numbered, "<bos>", "<eos>").unwrap_err().to_string();
    assert!(err.contains("by hand"), "{err}");
}

#[test]
fn the_modelfile_quotes_its_values() {
    let file = Modelfile {
        from: "./model.gguf".into(),
        adapter: Some("./adapter.gguf".into()),
        template: Some("{{ .Content }}".into()),
        stops: vec!["<end_of_turn>".into(), "say \"stop\"".into()],
    };
    assert_eq!(
        file.render().unwrap(),
        "# Written by `ember export`: `ollama create NAME -f Modelfile`.\nFROM ./model.gguf\n\
         ADAPTER ./adapter.gguf\nTEMPLATE \"\"\"{{ .Content }}\"\"\"\nPARAMETER stop \"<end_of_turn>\"\n\
         PARAMETER stop \"say \\\"stop\\\"\"\n"
    );
    let bad = Modelfile {
        template: Some("\"\"\"".into()),
        ..file
    };
    assert!(bad.render().is_err());
}
