//! Streamed generation text: the prompt's text followed by what the stream emits is the decode
//! of prompt + continuation, whatever the decoder does at token boundaries.

use std::str::FromStr;

use ember_data::{TextStream, Tokenizer};

use crate::common::{gemma, gemma3};

/// The pieces a stream emits for `continuation` after `prompt`, `finish` last.
fn stream(tokenizer: &Tokenizer, prompt: &[u32], continuation: &[u32]) -> Vec<String> {
    let mut stream = TextStream::new(tokenizer, prompt);
    let mut pieces: Vec<String> = continuation.iter().map(|&id| stream.push(id).unwrap()).collect();
    pieces.push(stream.finish().unwrap());
    pieces
}

fn assert_streams_the_full_decode(tokenizer: &Tokenizer, prompt: &str, continuation: &str) {
    let prompt = tokenizer.encode(prompt).unwrap();
    let continuation = tokenizer.encode_raw(continuation).unwrap();
    let pieces = stream(tokenizer, &prompt, &continuation);
    let full = tokenizer.decode(&[prompt.as_slice(), &continuation].concat()).unwrap();
    assert_eq!(tokenizer.decode(&prompt).unwrap() + &pieces.concat(), full);
    assert!(
        pieces.iter().all(|piece| !piece.contains('\u{FFFD}')),
        "no half characters are printed: {pieces:?}"
    );
}

/// A tokenizer of whole words (`model`: WordLevel or WordPiece) with Gemma's special tokens,
/// whose decoder puts the spaces between tokens.
fn words_tokenizer(model: serde_json::Value, decoder: serde_json::Value) -> Tokenizer {
    let specials = ["<pad>", "<eos>", "<bos>", "<unk>"];
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(id, token)| {
            serde_json::json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": decoder, "model": model,
    });
    Tokenizer::new(tokenizers::Tokenizer::from_str(&json.to_string()).unwrap()).unwrap()
}

fn vocab(words: &[&str]) -> serde_json::Value {
    let specials = ["<pad>", "<eos>", "<bos>", "<unk>"];
    let all = specials.iter().chain(words);
    serde_json::Value::Object(all.enumerate().map(|(id, w)| (w.to_string(), id.into())).collect())
}

#[test]
fn a_word_level_continuation_is_not_glued_to_the_prompt() {
    let words = ["Skipping", "a", "stone", "river", "the", "crosses", "."];
    let model = serde_json::json!({"type": "WordLevel", "vocab": vocab(&words), "unk_token": "<unk>"});
    // No decoder: tokenizers joins the tokens with spaces.
    let tokenizer = words_tokenizer(model, serde_json::Value::Null);
    let prompt = tokenizer.encode("Skipping a stone").unwrap();
    let continuation = tokenizer.encode_raw("crosses the river").unwrap();
    let pieces = stream(&tokenizer, &prompt, &continuation);
    assert_eq!(pieces.concat(), " crosses the river", "{pieces:?}");
    assert_streams_the_full_decode(&tokenizer, "Skipping a stone", "crosses the river .");
}

#[test]
fn a_wordpiece_continuation_joins_subwords_and_spaces_words() {
    let words = ["a", "stone", "skip", "##ping", "river", "##s", ",", "."];
    let model = serde_json::json!({"type": "WordPiece", "vocab": vocab(&words), "unk_token": "<unk>",
        "continuing_subword_prefix": "##", "max_input_chars_per_word": 100});
    let decoder = serde_json::json!({"type": "WordPiece", "prefix": "##", "cleanup": true});
    let tokenizer = words_tokenizer(model, decoder);
    assert_streams_the_full_decode(&tokenizer, "a stone", "skipping rivers , skipping stones .");
}

#[test]
fn gemma_streams_spaces_newlines_and_byte_fallback_characters_as_decoded() {
    let continuation = " Bonjour, café — naïve déjà vu 𝄞 ☕ 日本語\n2.  Done\n\n𐍈";
    for tokenizer in [gemma(), gemma3()] {
        let Some(tokenizer) = tokenizer else { return };
        for prompt in ["Say it in French:", "<start_of_turn>user\nHi<end_of_turn>\n", "𝄞"] {
            assert_streams_the_full_decode(&tokenizer, prompt, continuation);
        }
    }
}
