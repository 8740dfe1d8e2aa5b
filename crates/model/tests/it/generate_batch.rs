//! Batched generation's loop (`generate_batch_with`): every prompt gets the tokens it gets
//! alone (`generate_with`), rows stop at their own stop token or budget, and unfinished rows
//! step together. A model stand-in whose logits pick a token from the row's history makes
//! each row's text depend on everything it was fed.

use std::cell::RefCell;
use std::rc::Rc;

use ember_model::{
    BatchDecodeStep, DecodeStep, GemmaConfig, GenerationConfig, RowByRow, SamplingConfig, generate_batch_with,
    generate_with,
};

use crate::common::fixture;

const STOP: u32 = 7;

/// One sequence: logits one-hot at a hash of every token fed so far.
#[derive(Default)]
struct History {
    fed: Vec<u32>,
    vocab: usize,
}

impl DecodeStep for History {
    fn step(&mut self, ids: &[u32]) -> ember_model::Result<Vec<f32>> {
        self.fed.extend_from_slice(ids);
        let hash = self.fed.iter().fold(17u64, |h, &t| {
            let h = (h ^ t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h ^ (h >> 29)
        });
        let mut logits = vec![0.0; self.vocab];
        // One hash in six picks the stop token, so rows end at different steps.
        let token = if hash % 6 == 0 {
            STOP as usize
        } else {
            8 + (hash % 200) as usize
        };
        logits[token] = 1.0;
        Ok(logits)
    }
}

/// `History` rows stepped together, recording how many rows each step had.
struct Batch {
    rows: RowByRow<History>,
    widths: Rc<RefCell<Vec<usize>>>,
}

impl BatchDecodeStep for Batch {
    fn prefill(&mut self, row: usize, ids: &[u32]) -> ember_model::Result<Vec<f32>> {
        self.rows.prefill(row, ids)
    }

    fn step(&mut self, tokens: &[(usize, u32)]) -> ember_model::Result<Vec<Vec<f32>>> {
        self.widths.borrow_mut().push(tokens.len());
        self.rows.step(tokens)
    }
}

#[test]
fn each_prompt_gets_what_it_gets_alone() {
    let model = GemmaConfig::from_file(fixture("gemma3").join("config.json")).unwrap();
    let vocab = model.vocab_size;
    let prompts: Vec<Vec<u32>> = vec![vec![2, 10, 11], vec![2, 12], vec![2, 13, 14, 15, 16], vec![2, 99]];
    let config = GenerationConfig {
        max_new_tokens: 12,
        stop_tokens: vec![STOP],
        sampling: SamplingConfig::default(),
    };
    let widths = Rc::new(RefCell::new(Vec::new()));
    let mut seen = vec![Vec::new(); prompts.len()];
    let batched = generate_batch_with(
        &model,
        &prompts,
        &config,
        |rows, _capacity| {
            Ok(Batch {
                rows: RowByRow((0..rows).map(|_| History { fed: Vec::new(), vocab }).collect()),
                widths: widths.clone(),
            })
        },
        |row, token| {
            seen[row].push(token);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(seen, batched, "on_token sees every row's tokens in order");
    for (prompt, tokens) in prompts.iter().zip(&batched) {
        let alone = generate_with(
            &model,
            prompt,
            &config,
            |_| Ok(History { fed: Vec::new(), vocab }),
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(tokens, &alone, "prompt {prompt:?}");
        assert!(tokens.len() == 12 || tokens.last() == Some(&STOP), "{tokens:?}");
    }
    let lengths: Vec<usize> = batched.iter().map(Vec::len).collect();
    assert!(
        lengths.iter().any(|&n| n < 12) && lengths.contains(&12),
        "some rows stop early, some run to the budget: {lengths:?}"
    );
    // One step per token after the first, with every row still going: 11 steps, as wide as
    // the rows left.
    let widths = widths.borrow();
    assert_eq!(widths.len(), lengths.iter().max().unwrap() - 1, "{widths:?}");
    for (step, &width) in widths.iter().enumerate() {
        assert_eq!(
            width,
            lengths.iter().filter(|&&n| n > step + 1).count(),
            "step {step}: {widths:?}"
        );
    }
}
