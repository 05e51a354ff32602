"""Training corpora the suites build themselves: sentences over the tiny test vocabulary."""

import random

WORDS = [
    "the", "a", "is", "of", "and", "to", "in", "it", "was", "cat", "dog", "sat", "on", "mat", "ran", "paris",
    "france", "capital", "city", "big", "small", "red", "blue", "house", "tree", "he", "she",
]


def corpus_bytes(lines: int = 240, seed: int = 0) -> bytes:
    """Sentences over the tiny vocabulary, with numbers and punctuation (every category appears)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(2, 99)))
        texts.append(" ".join(words) + rng.choice([" .", " !", " ?", " ,"]))
    return "\n".join(texts).encode()
