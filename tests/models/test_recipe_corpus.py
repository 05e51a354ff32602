"""The default-model recipe cuts its sources into training segments: nothing may be lost,
reordered or made longer than the training length allows."""

from hypothesis import given
from hypothesis import strategies as st

from recipes.default_model import build_corpus
from recipes.default_model.build_corpus import SEGMENT_WORDS, austen_novels, harvard_segments, packed, pieces

words = st.text(alphabet="abcdefghij", min_size=1, max_size=8)
sentences = st.builds(
    lambda head, rest, end: " ".join([head.capitalize(), *rest]) + end,
    words, st.lists(words, max_size=30), st.sampled_from([".", "!", "?"]),
)


@given(st.lists(sentences, min_size=1, max_size=40))
def test_pieces_keep_every_word_in_order_within_the_limit(text_sentences):
    text = " ".join(text_sentences)
    cut = list(pieces(text))
    assert " ".join(cut).split() == text.split()
    # A piece is over the limit only when it is one sentence that is over it on its own.
    assert all(len(piece.split()) <= SEGMENT_WORDS or piece in text_sentences for piece in cut)


@given(st.lists(st.lists(words, min_size=1, max_size=25).map(" ".join), max_size=60))
def test_packed_joins_neighbours_without_losing_or_splitting_any(utterances):
    groups = list(packed(iter(utterances)))
    assert " ".join(groups).split() == " ".join(utterances).split()
    assert all(len(group.split()) <= max(SEGMENT_WORDS, 25) for group in groups)
    assert len(groups) <= len(utterances)


def test_pieces_cut_at_sentence_ends():
    sentence = "The dog barked at the mailman all morning long and would not stop."  # 13 words
    text = " ".join([sentence] * 10)
    four, two = " ".join([sentence] * 4), " ".join([sentence] * 2)
    assert list(pieces(text)) == [four, four, two]


def test_sources_read_from_r_packages_are_skipped_when_not_unpacked(tmp_path, monkeypatch, capsys):
    # The corpus still builds on a machine without the R data (the recipe says how to get it).
    monkeypatch.setattr(build_corpus, "STRINGR_ROOTS", (tmp_path,))
    monkeypatch.setattr(build_corpus, "AUSTEN_ROOTS", (tmp_path / "elsewhere",))
    assert list(harvard_segments()) == []
    assert list(austen_novels()) == []
    said = capsys.readouterr().out
    assert said.count("skipping") == 2 and "stringr" in said and "janeaustenr" in said


def test_chat_conversations_are_read_from_the_wheel_and_skipped_without_it(tmp_path, monkeypatch, capsys):
    import zipfile

    monkeypatch.setattr(build_corpus, "WHEELS_DIR", tmp_path)
    assert list(build_corpus.chat_segments()) == []
    assert "skipping" in capsys.readouterr().out
    conversations = "conversations:\n- - How are you?\n  - I am fine, thank you\n- - Do you like tea?\n  - Yes!\n"
    with zipfile.ZipFile(tmp_path / build_corpus.CHATTERBOT_WHEEL, "w") as wheel:
        wheel.writestr("chatterbot_corpus/data/english/greetings.yml", conversations)
        wheel.writestr("chatterbot_corpus/data/french/greetings.yml", "conversations:\n- - Bonjour\n  - Salut\n")
    assert list(build_corpus.chat_segments()) == ["How are you? I am fine, thank you.", "Do you like tea? Yes!"]
