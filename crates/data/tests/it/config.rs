//! The `[data]` table: defaults, every key read, unknown keys rejected by name.

use ember_data::{Columns, DataConfig, EvalSplit, Format, Layout, TemplateSpec, TrainOn, Truncation};

fn parse(toml_text: &str) -> Result<DataConfig, String> {
    toml::from_str::<DataConfig>(toml_text).map_err(|e| e.to_string())
}

#[test]
fn only_path_is_required_and_defaults_follow_the_seed() {
    let config = parse(r#"path = "train.parquet""#).unwrap();
    assert_eq!(config, DataConfig::new("train.parquet"));
    assert_eq!(config.format, Format::Auto);
    assert_eq!(config.train_on, TrainOn::All);
    assert_eq!(config.max_seq_length, 2048);
    assert_eq!(config.truncation, Truncation::Truncate);
    assert!(!config.packing && !config.group_by_length && config.shuffle);
    assert_eq!(config.seed, 3407);
    assert_eq!((config.eval.clone(), config.num_proc), (None, None));
    assert_eq!(
        config.template_spec(&config.columns.layout().unwrap()),
        TemplateSpec::AlpacaSeed
    );
    config.validate().unwrap();
    assert!(parse("format = \"csv\"").unwrap_err().contains("missing field `path`"));
}

#[test]
fn every_key_parses() {
    let config = parse(
        r#"
        path = "data/*.jsonl"
        format = "jsonl"
        columns = { prompt = "question", completion = "answer" }
        template = { custom = "Q: {prompt}\nA: {completion}" }
        train_on = "completion"
        max_seq_length = 512
        truncation = "drop"
        packing = true
        group_by_length = false
        shuffle = false
        seed = 1
        eval = { path = "eval.jsonl" }
        num_proc = 2
        "#,
    )
    .unwrap();
    assert_eq!(config.format, Format::Jsonl);
    assert_eq!(
        config.columns.layout().unwrap(),
        Layout::PromptCompletion {
            prompt: "question".into(),
            completion: "answer".into()
        }
    );
    assert_eq!(
        config.template,
        Some(TemplateSpec::Custom("Q: {prompt}\nA: {completion}".into()))
    );
    assert_eq!(config.eval, Some(EvalSplit::Path("eval.jsonl".into())));
    config.validate().unwrap();
    let round_trip: DataConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
    assert_eq!(round_trip, config);

    let chat = parse("path = \"c.jsonl\"\ntemplate = \"gemma-chat\"\ncolumns = { messages = \"messages\" }\neval = { fraction = 0.05 }").unwrap();
    assert_eq!(chat.template, Some(TemplateSpec::GemmaChat));
    assert_eq!(chat.eval, Some(EvalSplit::Fraction(0.05)));
    chat.validate().unwrap();
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let err = parse("path = \"a\"\nmax_seq_len = 10").unwrap_err();
    assert!(err.contains("unknown field `max_seq_len`"), "{err}");
    let err = parse("path = \"a\"\ncolumns = { instructions = \"x\" }").unwrap_err();
    assert!(err.contains("unknown field `instructions`"), "{err}");
    let err = parse("path = \"a\"\ntemplate = \"alpaca\"").unwrap_err();
    assert!(err.contains("unknown variant `alpaca`"), "{err}");
    let err = parse("path = \"a\"\neval = { share = 0.1 }").unwrap_err();
    assert!(err.contains("unknown variant `share`"), "{err}");
    let err = parse("path = \"a\"\ntrain_on = \"response\"").unwrap_err();
    assert!(err.contains("unknown variant `response`"), "{err}");
}

#[test]
fn values_serde_cannot_check_are_validated() {
    let cases: [(&str, &str); 7] = [
        (
            "packing = true\ngroup_by_length = true",
            "`group_by_length` cannot be combined",
        ),
        (
            "eval = { fraction = 1.0 }",
            "`eval.fraction` = 1: must be strictly between 0 and 1",
        ),
        (
            "eval = { fraction = nan }",
            "`eval.fraction` = NaN: must be strictly between",
        ),
        ("num_proc = 0", "`num_proc` = 0: must be at least 1"),
        ("max_seq_length = 1", "`max_seq_length` = 1: must be at least 2"),
        ("columns = { prompt = \"p\" }", "needs `completion`"),
        (
            "columns = { prompt = \"p\", completion = \"c\", output = \"o\" }",
            "mixes the keys",
        ),
    ];
    for (extra, expected) in cases {
        let config = parse(&format!("path = \"a.jsonl\"\n{extra}")).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(expected), "{extra}: {err}");
    }
}

#[test]
fn column_layouts_resolve_with_defaults() {
    let instruction_only = Columns {
        instruction: Some("q".into()),
        output: Some("a".into()),
        ..Columns::default()
    };
    assert_eq!(
        instruction_only.layout().unwrap(),
        Layout::Instruction {
            instruction: "q".into(),
            input: None,
            output: "a".into()
        }
    );
    let sharegpt = Columns {
        conversations: Some("conversations".into()),
        ..Columns::default()
    };
    assert_eq!(
        sharegpt.layout().unwrap(),
        Layout::Conversations {
            column: "conversations".into()
        }
    );
    let config = DataConfig {
        columns: sharegpt,
        ..DataConfig::new("x")
    };
    assert_eq!(
        config.template_spec(&config.columns.layout().unwrap()),
        TemplateSpec::GemmaChat
    );
}

#[test]
fn a_template_asks_in_its_own_format() {
    let instruction = Layout::Instruction {
        instruction: "instruction".into(),
        input: Some("input".into()),
        output: "output".into(),
    };
    let seed = TemplateSpec::AlpacaSeed
        .prompt_for(&instruction, "Name a colour.")
        .unwrap();
    assert_eq!(seed, ember_data::alpaca_seed_prompt("Name a colour.", ""));
    assert!(seed.ends_with("### Response:\n \n"), "the seed's way: {seed:?}");
    let chat = Layout::Messages {
        column: "messages".into(),
    };
    assert_eq!(
        TemplateSpec::GemmaChat.prompt_for(&chat, "Hi ").unwrap(),
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
    let custom = TemplateSpec::Custom("<bos>Q: {instruction} {{x}} {input}\nA: {output}".into());
    assert_eq!(custom.prompt_for(&instruction, "Why?").unwrap(), "Q: Why? {x} \nA: ");
    let prompt_completion = Layout::PromptCompletion {
        prompt: "prompt".into(),
        completion: "completion".into(),
    };
    let completion = TemplateSpec::Custom("{prompt}{completion}".into());
    assert_eq!(completion.prompt_for(&prompt_completion, "2+2=").unwrap(), "2+2=");
    assert!(
        completion.prompt_for(&instruction, "2+2=").is_err(),
        "a template that does not fit the columns"
    );
}
