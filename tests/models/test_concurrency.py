"""Many sessions at once: tokenizer, attribution, attention and the what-ifs called from a thread pool.

The app keeps one copy of each model and its tokenizer for every session (RELIABILITY.md, "Many
sessions"), so 16 threads calling at once must each get exactly what the same call gives alone, and
leave the shared model as they found it: no hook of ours or captum's, no gradient, still in eval mode.

Hooks are compared with a snapshot taken after the single-thread pass, not with zero: transformers 5
installs its own attention recorders (``transformers.utils.output_capturing``) on the first
``output_attentions=True`` call and keeps them; anything else left behind is a leak.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.modules.module as torch_module

from mlm_core.explain import attention, attribution
from mlm_core.explain import whatif as interference
from mlm_core.explain.exploration import explore
from mlm_core.explain.predict import pseudo_log_likelihood
from mlm_core.masking import strategy_from_params
from mlm_core.text.tokens import tokenize

WORKERS = 16
CALLS = 64
CALLS_PER_THREAD = 120  # the tokenizer-only test: 16 threads x 120 short calls back to back
TOLERANCE = 1e-6  # floats and float arrays; everything else must be equal
VOLATILE = {"seconds"}  # wall-clock fields of a result (Attribution.seconds)
TRANSFORMERS_RECORDERS = "transformers."

SHORT = "the cat sat on the [MASK] , the dog ran ."  # fits the tiny model (64 positions)
TYPED_SPECIALS = "he typed [CLS] and [SEP] : the [MASK] sat on a big red mat ."
TEXTS = (
    SHORT,
    TYPED_SPECIALS,
    "Paris is the capital of [MASK] , she said !",
    "emoji 😀 , cafe\u0301 , \u05e9\u05dc\u05d5\u05dd and \u4e2d\u6587 in a [MASK] house",
    # long (no model call): a slow encode gives other threads time to change the shared tokenizer
    ("the big red dog ran to the small blue house . he typed [CLS] there , [SEP] here ! " * 40) + "[MASK] .",
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread: the single-thread answer and the pool's are computed the same way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def outcome(call: Callable[[], object]) -> tuple:
    """("ok", value) or ("error", type, message): a refusal must also be the same from every thread."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - "Already borrowed" and friends must show up as a difference
        return ("error", type(exc).__name__, str(exc))


def differences(a, b, where: str = "result") -> list[str]:
    """Where ``a`` and ``b`` differ (floats within TOLERANCE), for a readable failure."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return [f"{where}: {type(a).__name__} vs {type(b).__name__}"]
        found = []
        for field in dataclasses.fields(a):
            if field.name not in VOLATILE:
                found += differences(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
        return found
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.shape != b.shape or a.dtype != b.dtype:
            return [f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"]
        if a.dtype.kind in "fc":
            same = np.allclose(a, b, rtol=0.0, atol=TOLERANCE, equal_nan=True)
        else:
            same = np.array_equal(a, b)
        return [] if same else [f"{where}: arrays differ (max {np.nanmax(np.abs(a - b)) if a.dtype.kind in 'fc' else '-'})"]
    if isinstance(a, float) and isinstance(b, float):
        same = abs(a - b) <= TOLERANCE or (np.isnan(a) and np.isnan(b))
        return [] if same else [f"{where}: {a!r} vs {b!r}"]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b) or type(a) is not type(b):
            return [f"{where}: {type(a).__name__} of {len(a)} vs {type(b).__name__} of {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}[{k!r}]")]
    return [] if type(a) is type(b) and a == b else [f"{where}: {a!r} vs {b!r}"]


def hook_state(model: torch.nn.Module) -> dict[tuple[str, str], tuple]:
    """Every non-empty hook dictionary of every module (and torch's global ones): (module, kind) → hook ids."""
    state = {}
    for name, module in model.named_modules():
        for kind, hooks in vars(module).items():
            if "hook" in kind and isinstance(hooks, dict) and hooks:
                state[(name, kind)] = tuple(hooks)
    for kind in dir(torch_module):
        hooks = getattr(torch_module, kind)
        if kind.startswith("_global") and "hook" in kind and isinstance(hooks, dict) and hooks:
            state[("<global>", kind)] = tuple(hooks)
    return state


def hook_owners(model: torch.nn.Module) -> set[str]:
    """The modules that defined the hook functions still on ``model``."""
    return {
        getattr(hook, "__module__", None) or type(hook).__name__
        for module in model.modules()
        for kind, hooks in vars(module).items()
        if "hook" in kind and isinstance(hooks, dict)
        for hook in hooks.values()
        if callable(hook)
    }


def run_in_pool(calls: list[tuple[str, Callable[[], object]]]) -> list[tuple]:
    """Every call from a pool of WORKERS threads; each wave of WORKERS calls starts together."""
    barrier = threading.Barrier(WORKERS)

    def together(call):
        barrier.wait(timeout=120)  # as many threads as possible inside the library at once
        return outcome(call)

    assert len(calls) % WORKERS == 0  # every wave fills the barrier
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(together, [call for _, call in calls]))


def model_calls(loaded) -> dict[str, Callable[[], object]]:
    """What the Explore page runs on a shared model (and the tokenizer calls inside them)."""
    short = tokenize(loaded.tokenizer, SHORT)
    typed = tokenize(loaded.tokenizer, TYPED_SPECIALS)
    mask = short.mask_positions[0]
    stopwords = interference.exclusion(short, rules=["stopword"], keep=[mask])
    return {
        "ig": lambda: attribution.attribute(loaded, short.ids, steps=16),
        "ig typed target, mask baseline": lambda: attribution.attribute(
            loaded, typed.ids, target="Paris", steps=8, baseline="mask"),
        "saliency": lambda: attribution.attribute(loaded, short.ids, method="saliency", target="DOG"),
        "input x gradient": lambda: attribution.attribute(loaded, typed.ids, method="input_x_gradient"),
        "ig refused target": lambda: attribution.attribute(loaded, short.ids, target="houses"),
        "attention maps": lambda: attention.attention_maps(loaded, typed.ids),
        "explore with attentions": lambda: explore(loaded, TYPED_SPECIALS, output_attentions=True),
        "explore random strategy, joint": lambda: explore(
            loaded, SHORT, strategy_from_params("random", {"mlm_probability": 0.3}), seed=3, fill="joint"),
        "heads off": lambda: interference.mask_heads(loaded, short.ids, [mask], [(0, 1), (1, 0)]),
        "head importance": lambda: interference.head_importance(loaded, typed.ids, typed.mask_positions[0]),
        "stopwords excluded": lambda: interference.exclude_tokens(loaded, short.ids, [mask], stopwords),
        "pruned": lambda: interference.prune(loaded, short.ids, [mask], 0.5, "global"),
        "pseudo-log-likelihood": lambda: pseudo_log_likelihood(loaded, short.ids),
    }


def tokenizer_calls(loaded, tokenizer) -> dict[str, Callable[[], object]]:
    calls = {f"tokenize {text[:24]!r}": (lambda text=text: tokenize(tokenizer, text)) for text in TEXTS}
    calls.update({f"target {word!r}": (lambda word=word: attribution.target_id_for(loaded, word))
                  for word in ("Paris", "CAT", "houses", "mat")})
    return calls


def schedule(calls: dict[str, Callable], n: int, seed: int, favour: tuple[str, ...] = ()) -> list[tuple[str, Callable]]:
    """``n`` calls, every kind at least once, in a seeded random order; half of them from ``favour``."""
    names = list(calls)
    rng = random.Random(seed)
    chosen = names + [rng.choice(favour if favour and rng.random() < 0.5 else names) for _ in range(n - len(names))]
    random.Random(seed + 1).shuffle(chosen)
    return [(name, calls[name]) for name in chosen]


def test_explore_page_calls_from_16_threads_give_the_single_thread_results_and_leave_no_hooks(tiny_loaded):
    loaded = tiny_loaded  # the shared cached model every session uses
    calls = {**model_calls(loaded), **tokenizer_calls(loaded, loaded.tokenizer)}
    single = {name: outcome(call) for name, call in calls.items()}  # also installs transformers' recorders
    assert single["ig refused target"][0] == "error" and "houses" in single["ig refused target"][2]
    hooks_after_single = hook_state(loaded.model)

    planned = schedule(calls, CALLS, seed=9)
    results = run_in_pool(planned)

    for (name, _), got in zip(planned, results):
        found = differences(single[name], got, name)
        assert not found, found[:5]
    assert hook_state(loaded.model) == hooks_after_single  # nothing added, nothing of transformers' removed
    assert all(owner.startswith(TRANSFORMERS_RECORDERS) for owner in hook_owners(loaded.model)), \
        hook_owners(loaded.model)
    for module in loaded.model.modules():  # transformers' recorders are forward hooks; nothing else may remain
        for kind in ("_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_full_backward_hooks", "_full_backward_pre_hooks"):
            assert not getattr(module, kind, None), (type(module).__name__, kind)
    assert not any(hook_state(loaded.model).get(("<global>", kind)) for kind in dir(torch_module))
    assert all(p.grad is None for p in loaded.model.parameters())  # attribution leaves no gradient behind
    assert not loaded.model.training


def test_tokenizer_from_many_threads_keeps_typed_specials_as_text(tiny_model_dir, tiny_loaded):
    """tokenize() and typed targets share one fast tokenizer; a fresh one, so first uses race too.

    transformers sets ``split_special_tokens`` on the shared Rust backend before each encode: an
    unlocked encode in one thread (a typed attribution target) between another thread's setting
    and its encode made a typed "[CLS]" the real control token there.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    loaded = dataclasses.replace(tiny_loaded, tokenizer=tokenizer)  # own tokenizer, shared nothing else
    calls = tokenizer_calls(loaded, tokenizer)
    # Mostly what races: typed specials (encoded with split_special_tokens) against typed targets
    # (encoded without it; "mat" is a vocabulary entry and never reaches the tokenizer).
    racing = (f"tokenize {TEXTS[1][:24]!r}", f"tokenize {TEXTS[-1][:24]!r}", "target 'Paris'", "target 'CAT'")
    plans = [schedule(calls, CALLS_PER_THREAD, seed=worker, favour=racing) for worker in range(WORKERS)]
    start = threading.Barrier(WORKERS)

    def worker(plan):
        start.wait(timeout=120)
        return [outcome(call) for _, call in plan]  # back to back: no pause for the others to finish

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = [r for rows in pool.map(worker, plans) for r in rows]
    planned = [step for plan in plans for step in plan]
    single = {name: outcome(call) for name, call in calls.items()}
    typed = single[f"tokenize {TEXTS[1][:24]!r}"][1]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert typed.ids[0] == cls_id and typed.ids[-1] == sep_id
    assert cls_id not in typed.ids[1:-1] and sep_id not in typed.ids[1:-1]  # typed, so text
    assert single["target 'houses'"][0] == "error"
    for (name, _), got in zip(planned, results):
        found = differences(single[name], got, name)
        assert not found, found[:5]


def spellings(folder) -> list[str]:
    """One folder named five ways, as different sessions or links may name it."""
    return [str(folder), f"{folder}/", f"{folder}//", f"{folder.parent}/./{folder.name}",
            f"{folder.parent}/../{folder.parent.name}/{folder.name}"]


@pytest.mark.parametrize("round_", range(3))
def test_different_models_loaded_from_many_threads_at_once_load_once_each_and_leave_loading_working(
        round_, tmp_path):
    """transformers swaps class-wide state while it loads (``PreTrainedModel.tie_weights``, torch's init
    functions, the default dtype): two loads at once could leave it swapped, and every later load was
    refused as having "no masked-language-model head". Loading is serialised process-wide; a folder
    however spelled is loaded once."""
    import safetensors.torch
    from conftest import build_tiny_bert
    from transformers import PreTrainedModel

    from mlm_core.model.loading import load_model

    tie_weights, init_weights = PreTrainedModel.tie_weights, PreTrainedModel.init_weights
    normal_init = torch.nn.init.normal_
    folders = [build_tiny_bert(tmp_path / f"seed{seed}", seed=seed) for seed in (10 * round_ + 1, 10 * round_ + 2,
                                                                                  10 * round_ + 3)]
    names = [(folder, name) for folder in folders for name in spellings(folder)]
    barrier = threading.Barrier(len(names))

    def load(name):
        barrier.wait(timeout=120)  # every thread asks at the same moment
        return outcome(lambda: load_model(name, device="cpu"))

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = list(pool.map(load, [name for _, name in names]))

    assert all(result[0] == "ok" for result in results), [r for r in results if r[0] != "ok"][:3]
    for folder in folders:
        loaded = [result[1] for (where, _), result in zip(names, results) if where == folder]
        assert len({id(one.model) for one in loaded}) == 1  # one copy per folder, however spelled
        assert len({id(one.lock) for one in loaded}) == 1  # and one lock guarding it
        stored = safetensors.torch.load_file(folder / "model.safetensors")
        key = "bert.embeddings.word_embeddings.weight"
        assert torch.equal(loaded[0].model.state_dict()[key], stored[key])  # this folder's weights, not another's
    assert [result[1].name for result in results] == [name.strip() for _, name in names]  # each caller's spelling
    # Nothing class-wide or process-wide is left swapped ...
    assert PreTrainedModel.tie_weights is tie_weights and PreTrainedModel.init_weights is init_weights
    assert torch.nn.init.normal_ is normal_init and torch.get_default_dtype() == torch.float32
    # ... so the next model loads with its head tied to its embeddings, as transformers builds it alone.
    later = load_model(str(build_tiny_bert(tmp_path / "later", seed=99)), device="cpu")
    assert later.model.get_output_embeddings().weight is later.model.get_input_embeddings().weight
    assert later.vocab_size == 39 and later.mask_token == "[MASK]"


def test_a_cached_model_is_returned_while_another_model_loads(tiny_model_dir):
    """The cache is looked up without the loading lock: one slow load (a hub download) stalls no session
    whose model is already loaded."""
    from mlm_core.model.loading import load_model, serialized_loading

    first = load_model(str(tiny_model_dir), device="cpu")
    answered = threading.Event()
    results = []

    def cached_load():
        results.append(load_model(f"{tiny_model_dir}/", device="cpu"))
        answered.set()

    with serialized_loading():  # as if another model were loading
        thread = threading.Thread(target=cached_load)
        thread.start()
        assert answered.wait(timeout=30)
    thread.join()
    assert results[0].model is first.model and results[0].name == f"{tiny_model_dir}/"
