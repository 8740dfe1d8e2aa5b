//! Tokenizing the 999-row Alpaca demo. Run with
//! `cargo test --release -p ember-data --test it -- --ignored --nocapture alpaca_throughput`.

use std::time::Instant;

use ember_data::load;

use crate::common::{asset, config, gemma};

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture (use --release)"]
fn alpaca_throughput() {
    let (Some(path), Some(tokenizer)) = (asset("data/alpaca_en_demo.json"), gemma()) else {
        return;
    };
    let mut config = config(&path);
    config.num_proc = Some(2);
    load(&config, &tokenizer).unwrap(); // warm the page cache and the thread pool
    let runs = 5;
    let start = Instant::now();
    let mut tokens = 0;
    for _ in 0..runs {
        tokens = load(&config, &tokenizer).unwrap().train.num_tokens();
    }
    let seconds = start.elapsed().as_secs_f64() / f64::from(runs);
    println!(
        "alpaca_en_demo.json: 999 records, {tokens} tokens, {:.1} ms per load on 2 threads \
         ({:.0} samples/s, {:.0} tokens/s)",
        seconds * 1e3,
        999.0 / seconds,
        tokens as f64 / seconds
    );
    assert!(seconds < 1.0);
}
