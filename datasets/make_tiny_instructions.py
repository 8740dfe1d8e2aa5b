"""Writes tiny-instructions.jsonl: 240 short instruction/input/output records generated from
fixed rules (arithmetic, word games, counting), so the quickstart has data that ships with the
repo and needs no license. Deterministic: `python3 datasets/make_tiny_instructions.py`."""

import json
import os
import random

WORDS = ["cat", "river", "apple", "stone", "cloud", "garden", "rust", "paper", "window", "light",
         "ocean", "forest", "music", "bread", "candle", "mirror", "planet", "winter", "summer", "tiger"]


def records(rng):
    for _ in range(60):
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        yield {"instruction": "Add the two numbers.", "input": f"{a} and {b}", "output": f"{a} + {b} = {a + b}."}
    for _ in range(60):
        w = rng.choice(WORDS)
        yield {"instruction": "Write the word backwards.", "input": w, "output": w[::-1]}
    for _ in range(60):
        w = rng.choice(WORDS)
        yield {"instruction": "Write the word in capital letters.", "input": w, "output": w.upper()}
    for _ in range(60):
        w = rng.choice(WORDS)
        yield {"instruction": "How many letters does the word have?", "input": w,
               "output": f"The word {w} has {len(w)} letters."}


def main():
    rng = random.Random(1357)
    rows = list(records(rng))
    rng.shuffle(rows)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny-instructions.jsonl")
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{len(rows)} records -> {path}")


if __name__ == "__main__":
    main()
