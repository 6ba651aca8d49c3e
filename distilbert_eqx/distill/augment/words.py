"""Words of a WordPiece-tokenised split, and which of them augmentation may replace.

A word is a first wordpiece and its ``##`` continuations (the ``bert-base-uncased`` convention), so BERT's
pre-tokeniser makes every punctuation mark a word of its own. A word is *eligible* for replacement when its
text (its pieces joined, ``##`` removed) is ASCII-alphabetic and not a stop word; a vocabulary entry is a
*whole-word candidate* (what a word may be replaced by) under the same rule and when it is not a continuation.
ASCII, not ``str.isalpha``: the BERT vocabularies hold thousands of CJK and accented single characters that
are alphabetic but no English replacement.
"""

import dataclasses

import numpy as np
from jaxtyping import Bool, Int32, Int64

from ...data import SentenceTokenizer, TokenizedSplit

# NLTK's English stop-word list (nltk.corpus.stopwords.words("english"), the list TinyBERT's
# data_augmentation.py copies as StopWordsList), alphabetic entries only: BERT splits "don't" into "don", "'",
# "t", so the entries with an apostrophe could never match a word. It keeps "no", "nor", "not" and "very"
# from being replaced, which matters for sentiment.
STOP_WORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves what which who whom this that these those am is are
    was were be been being have has had having do does did doing a an the and but if or because as until while
    of at by for with about against between into through during before after above below to from up down in
    out on off over under again further then once here there when where why how all any both each few more
    most other some such no nor not only own same so than too very s t can will just don should now d ll m o re
    ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn needn shan shouldn wasn weren won wouldn
    """.split()  # noqa: SIM905 (the list as NLTK prints it, easy to compare)
)


def is_replaceable(text: str) -> bool:
    """Whether a word (or vocabulary entry) of this text may be replaced, or be a replacement."""
    return text.isascii() and text.isalpha() and text not in STOP_WORDS


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
    """What augmentation needs to know of a WordPiece vocabulary, by token id."""

    tokens: tuple[str, ...]
    continuation: Bool[np.ndarray, " vocab"]
    replaceable: Bool[np.ndarray, " vocab"]
    cls_id: int
    sep_id: int
    mask_id: int

    def __len__(self) -> int:
        return len(self.tokens)


def vocabulary(tokenizer: SentenceTokenizer) -> Vocabulary:
    """The tokenizer's vocabulary, with its ``##`` continuations and whole-word candidates marked."""
    by_id = {i: token for token, i in tokenizer.backend.get_vocab(with_added_tokens=True).items()}
    tokens = tuple(by_id.get(i, "") for i in range(max(by_id) + 1))
    specials = {}
    for name in ("[CLS]", "[SEP]", "[MASK]"):
        token_id = tokenizer.backend.token_to_id(name)
        if token_id is None:
            raise ValueError(
                f"the tokenizer has no {name} token; augmentation needs a BERT WordPiece vocabulary"
            )
        specials[name] = token_id
    return Vocabulary(
        tokens,
        np.fromiter((t.startswith("##") for t in tokens), np.bool_, count=len(tokens)),
        np.fromiter((is_replaceable(t) for t in tokens), np.bool_, count=len(tokens)),
        specials["[CLS]"],
        specials["[SEP]"],
        specials["[MASK]"],
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Words:
    """The words of every example of a tokenised split, flat: example ``i``'s words are
    ``offsets[i]:offsets[i + 1]``; word ``w`` is ``pieces[w]`` tokens from ``split.token_ids[starts[w]]``.
    ``[CLS]`` and ``[SEP]`` are not words."""

    offsets: Int64[np.ndarray, " examples_plus_1"]
    starts: Int64[np.ndarray, " words"]
    pieces: Int64[np.ndarray, " words"]
    eligible: Bool[np.ndarray, " words"]

    def __len__(self) -> int:
        return len(self.starts)

    def text(self, split: TokenizedSplit, vocab: Vocabulary, w: int) -> str:
        """Word ``w``'s text: its pieces joined, ``##`` removed."""
        ids = split.token_ids[self.starts[w] : self.starts[w] + self.pieces[w]]
        return "".join(vocab.tokens[i].removeprefix("##") for i in ids)

    def piece_ids(self, split: TokenizedSplit, w: int) -> tuple[int, ...]:
        return tuple(int(i) for i in split.token_ids[self.starts[w] : self.starts[w] + self.pieces[w]])


def split_words(split: TokenizedSplit, vocab: Vocabulary) -> Words:
    """Segment every example of ``split`` (``[CLS] ... [SEP]``, as ``data.tokenize_split`` makes them) into words.

    The first token after ``[CLS]`` always starts a word, even a stray ``##`` piece (a truncated word cannot
    start one, since truncation cuts the end).
    """
    ids = split.token_ids
    lengths = split.lengths
    if np.any(lengths < 2):
        raise ValueError("every example must hold at least [CLS] and [SEP]")
    position = np.arange(len(ids)) - np.repeat(split.offsets[:-1], lengths)
    inner = (position > 0) & (position < np.repeat(lengths, lengths) - 1)
    starts = np.flatnonzero(inner & (~vocab.continuation[ids] | (position == 1)))
    # A word ends where the next word or the example's [SEP] begins.
    example = np.repeat(np.arange(len(lengths)), lengths)[starts]
    words_per_example = np.bincount(example, minlength=len(lengths))
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(words_per_example)])
    ends = np.append(starts[1:], 0)
    last = offsets[1:][words_per_example > 0] - 1
    ends[last] = split.offsets[1:][words_per_example > 0] - 1
    pieces = ends - starts
    eligible = (pieces == 1) & vocab.replaceable[ids[starts]]
    words = Words(offsets, starts.astype(np.int64), pieces.astype(np.int64), eligible)
    for w in np.flatnonzero(pieces > 1):
        eligible[w] = is_replaceable(words.text(split, vocab, int(w)))
    return words


def word_ids(split: TokenizedSplit, words: Words) -> Int32[np.ndarray, " words"]:
    """Each word's first token id (its only one for a single-piece word)."""
    return split.token_ids[words.starts]
