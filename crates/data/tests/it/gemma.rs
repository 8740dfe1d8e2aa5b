//! With the real Gemma tokenizers: token ids, BOS/EOS placement and mask boundaries, pinned
//! against Hugging Face `tokenizers` (Python) applied the seed's way:
//! `tokenizer(alpaca_prompt.format(instruction, input, output) + EOS_TOKEN)`.

use ember_data::{ALPACA_SEED, Columns, TemplateSpec, TrainOn, alpaca_seed_prompt};

use crate::common::{alpaca_jsonl, alpaca_records, asset, config, gemma, gemma3, load_ok, write};

/// The seed's prompt string, verbatim (a Python triple-quoted string: it ends with a newline
/// after the response's `{}`).
const SEED_PROMPT: &str = "Based on given instruction and input, generate an appropriate response
### Instruction:
{}
### Input:
{}
### Response:
{}
";

/// Python: `Tokenizer.from_file(gemma).encode(SEED_PROMPT.format(*record) + "<eos>").ids` for the
/// first alpaca record (tokenizers 0.22.1, 2026-12-02): the response, `\n` (108), `<eos>`.
const SEED_IDS: [u32; 54] = [
    2, 17545, 611, 2764, 14239, 578, 3772, 235269, 11941, 671, 8348, 3590, 108, 6176, 36142, 235292, 108, 23136, 2149,
    9697, 604, 23213, 9606, 235265, 108, 6176, 11438, 235292, 109, 6176, 10567, 235292, 108, 235274, 235265, 38141,
    476, 24748, 11652, 235265, 108, 235284, 235265, 30896, 16969, 235265, 108, 235304, 235265, 24109, 1578, 235265,
    108, 1,
];

/// Tokens of the seed's prompt part ("...### Response:\n"), BOS included.
const PROMPT_LEN: usize = 33;

/// Python: the same text with the Gemma 3 tokenizer (`\n` is 107 there).
const SEED_IDS_GEMMA3: [u32; 54] = [
    2, 22515, 580, 2238, 14787, 532, 2744, 236764, 8729, 614, 6780, 3072, 107, 10354, 64017, 236787, 107, 46762, 1806,
    11221, 573, 19447, 7644, 236761, 107, 10354, 13065, 236787, 108, 10354, 14503, 236787, 107, 236770, 236761, 53715,
    496, 20433, 9337, 236761, 107, 236778, 236761, 38215, 14578, 236761, 107, 236800, 236761, 32104, 1388, 236761, 107,
    1,
];

/// Python: `encode("<bos><start_of_turn>user\nYou are terse.\n\nWhat is 2+2?<end_of_turn>\n
/// <start_of_turn>model\n4<end_of_turn>\n", add_special_tokens=False)`, the text Gemma's
/// Hugging Face chat template writes for [system, user, assistant].
const CHAT_IDS: [u32; 24] = [
    2, 106, 1645, 108, 2045, 708, 12769, 235265, 109, 1841, 603, 235248, 235284, 235340, 235284, 235336, 107, 108, 106,
    2516, 108, 235310, 107, 108,
];

const CHAT_IDS_GEMMA3: [u32; 24] = [
    2, 105, 2364, 107, 3048, 659, 17514, 236761, 108, 3689, 563, 236743, 236778, 236862, 236778, 236881, 106, 107, 105,
    4368, 107, 236812, 106, 107,
];

fn first_sample(config: &ember_data::DataConfig, tokenizer: &ember_data::Tokenizer) -> (Vec<u32>, Vec<bool>) {
    let splits = load_ok(config, tokenizer);
    let sample = splits.train.get(0).unwrap();
    (sample.input_ids.to_vec(), sample.trained.to_vec())
}

#[test]
fn alpaca_seed_is_the_seeds_prompt_string() {
    let positional = ALPACA_SEED
        .replace("{instruction}", "{}")
        .replace("{input}", "{}")
        .replace("{output}", "{}");
    assert_eq!(positional, SEED_PROMPT);
}

#[test]
fn alpaca_seed_sample_has_the_seed_token_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.jsonl", alpaca_jsonl());
    for (tokenizer, expected) in [(gemma(), &SEED_IDS), (gemma3(), &SEED_IDS_GEMMA3)] {
        let Some(tokenizer) = tokenizer else { return };
        let (ids, trained) = first_sample(&config(&path), &tokenizer);
        assert_eq!(ids, expected);
        // train_on = "all" (the seed): everything but BOS.
        assert!(!trained[0]);
        assert!(trained[1..].iter().all(|&t| t));
    }
}

#[test]
fn completion_mask_starts_exactly_at_the_response_and_ends_with_eos() {
    let Some(tokenizer) = gemma() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&write(dir.path(), "a.jsonl", alpaca_jsonl()));
    config.train_on = TrainOn::Completion;
    let (ids, trained) = first_sample(&config, &tokenizer);
    assert_eq!(ids, SEED_IDS, "the mask never changes the ids");
    let first_trained = trained.iter().position(|&t| t).unwrap();
    assert_eq!(first_trained, PROMPT_LEN);
    assert!(trained[PROMPT_LEN..].iter().all(|&t| t));
    let response = tokenizer.decode_with_specials(&ids[PROMPT_LEN..]).unwrap();
    assert_eq!(
        response, "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Sleep well.\n<eos>",
        "the newline after the response is trained, as the seed trains it"
    );
}

#[test]
fn the_seed_asks_with_a_space_in_the_response_slot() {
    assert_eq!(
        alpaca_seed_prompt("Fill {input} in", "{output}"),
        "Based on given instruction and input, generate an appropriate response\n### Instruction:\nFill {input} \
         in\n### Input:\n{output}\n### Response:\n \n",
        "the text goes in verbatim, braces included"
    );
    // Python: `encode(SEED_PROMPT.format(instruction, input, " ")).ids`: the prompt part of the
    // training sample, then " " and "\n".
    let asks = [
        (gemma(), &SEED_IDS, [235248, 108]),
        (gemma3(), &SEED_IDS_GEMMA3, [236743, 107]),
    ];
    for (tokenizer, sample, tail) in asks {
        let Some(tokenizer) = tokenizer else { return };
        let [instruction, input, _] = alpaca_records()[0];
        let ids = tokenizer.encode(&alpaca_seed_prompt(instruction, input)).unwrap();
        assert_eq!(ids, [&sample[..PROMPT_LEN], &tail].concat());
    }
}

#[test]
fn bos_appears_exactly_once() {
    let Some(tokenizer) = gemma() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.jsonl", alpaca_jsonl());
    let with_bos = "<bos>Based on given instruction and input, generate an appropriate response\n\
                    ### Instruction:\n{instruction}\n### Input:\n{input}\n### Response:\n{output}\n<eos>";
    let templates = [
        None,
        Some(TemplateSpec::AlpacaSeed),
        Some(TemplateSpec::Custom(with_bos.into())),
    ];
    for template in templates {
        let mut config = config(&path);
        config.template = template;
        let splits = load_ok(&config, &tokenizer);
        for sample in splits.train.iter() {
            assert_eq!(sample.input_ids[0], 2);
            assert_eq!(sample.input_ids.iter().filter(|&&id| id == 2).count(), 1);
            assert_eq!(sample.input_ids.iter().filter(|&&id| id == 1).count(), 1, "one EOS");
            assert_eq!(*sample.input_ids.last().unwrap(), 1, "EOS ends the response");
        }
        assert_eq!(splits.train.get(0).unwrap().input_ids, SEED_IDS);
    }
}

#[test]
fn gemma_chat_matches_the_hf_chat_template_and_trains_model_turns_only() {
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::json!({"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": " 4\n"},
    ]});
    let path = write(dir.path(), "chat.jsonl", format!("{line}\n"));
    for (tokenizer, expected, end_of_turn) in [(gemma(), &CHAT_IDS, 107), (gemma3(), &CHAT_IDS_GEMMA3, 106)] {
        let Some(tokenizer) = tokenizer else { return };
        let mut config = config(&path);
        config.columns = Columns {
            messages: Some("messages".into()),
            ..Columns::default()
        };
        config.train_on = TrainOn::Completion;
        let (ids, trained) = first_sample(&config, &tokenizer);
        assert_eq!(ids, expected);
        let trained_ids: Vec<u32> = ids.iter().zip(&trained).filter(|(_, t)| **t).map(|(i, _)| *i).collect();
        // The answer ("4", trimmed) and the <end_of_turn> that closes the model turn.
        assert_eq!(tokenizer.decode(&trained_ids[..1]).unwrap(), "4");
        assert_eq!(trained_ids[1..], [end_of_turn]);
        assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 1);
    }
}

#[test]
fn special_token_text_in_data_stays_text() {
    let Some(tokenizer) = gemma() else { return };
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::json!({"instruction": "Say <eos> or <start_of_turn>", "input": "", "output": "<bos>"});
    let path = write(dir.path(), "s.jsonl", format!("{line}\n"));
    let (ids, _) = first_sample(&config(&path), &tokenizer);
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 1);
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 1);
    assert!(!ids.contains(&106));
}

#[test]
fn the_alpaca_and_chat_demos_load_completely() {
    let (Some(tokenizer), Some(alpaca), Some(chat)) = (
        gemma(),
        asset("data/alpaca_en_demo.json"),
        asset("data/v1_sft_demo.jsonl"),
    ) else {
        return;
    };
    let splits = load_ok(&config(&alpaca), &tokenizer);
    assert_eq!(splits.train.stats().records, 999);
    assert_eq!(splits.train.len(), 999);
    assert_eq!(splits.train.num_tokens(), 193_204);
    // Every id of all 999 samples equals the seed's tokenization: Python
    // `tokenizer.encode_batch([SEED_PROMPT.format(...) + "<eos>" ...])` hashed with the
    // layout of `Dataset::fingerprint` (FNV-1a over u64 length, then u32 id + trained byte).
    assert_eq!(splits.train.fingerprint(), 0x7d8f_0105_16cb_0ff2);

    let mut chat_config = config(&chat);
    chat_config.columns = Columns {
        messages: Some("messages".into()),
        ..Columns::default()
    };
    chat_config.train_on = TrainOn::Completion;
    let splits = load_ok(&chat_config, &tokenizer);
    assert_eq!(splits.train.len(), 500);
    for sample in splits.train.iter() {
        assert_eq!(sample.input_ids[..2], [2, 106]);
        assert_eq!(sample.input_ids.iter().filter(|&&id| id == 2).count(), 1);
    }
}
