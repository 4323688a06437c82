from mipic.training.data.text import clean, is_good_sentence, split_sentences, text_key


def test_split_sentences_on_punctuation_quotes_and_paragraphs() -> None:
    text = 'He said "stop." Then he left! Did she? Yes.\nNew paragraph without a stop'
    assert split_sentences(text) == [
        'He said "stop."',
        "Then he left!",
        "Did she?",
        "Yes.",
        "New paragraph without a stop",
    ]


def test_split_sentences_keeps_abbreviations_and_initials() -> None:
    text = "Mr. Smith met U.S. officials on Jan. 5 today. J. R. R. Tolkien wrote it. Fine."
    assert split_sentences(text) == [
        "Mr. Smith met U.S. officials on Jan. 5 today.",
        "J. R. R. Tolkien wrote it.",
        "Fine.",
    ]


def test_no_split_before_lowercase() -> None:
    assert split_sentences("It costs 3.5 dollars. e.g. this stays together.") == [
        "It costs 3.5 dollars. e.g. this stays together."
    ]


def test_good_sentence_bounds() -> None:
    assert not is_good_sentence("Too short.")
    assert is_good_sentence("This sentence has enough words to count as one.")
    assert not is_good_sentence(" ".join(["word"] * 65))


def test_clean_and_key() -> None:
    assert clean("  a \n b\t c ") == "a b c"
    assert text_key("Hello   World") == text_key("hello world")
