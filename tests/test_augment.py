"""The augmentation pool: word segmentation, each method's effect, determinism, deduplication, the on-disk key,
atomic writes, and the masked-LM candidates against transformers on a tiny random BertForMaskedLM."""

import dataclasses
import re

import numpy as np
import pytest
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, processors

from distilbert_eqx.data import SentenceTokenizer, TextSplit, tokenize_split
from distilbert_eqx.distill.augment import AugmentError, AugmentSettings, augmented_pool, load_pool, pool
from distilbert_eqx.distill.augment.mlm import load_masked_lm, masked_lm_candidates
from distilbert_eqx.distill.augment.neighbours import vocabulary_neighbours, word_candidates
from distilbert_eqx.distill.augment.words import split_words, vocabulary
from helpers import tiny_teacher

CONTENT = [
    *("good", "bad", "movie", "film", "great", "awful", "plot", "actor", "story", "funny", "boring", "dull"),
    *("bright", "dark", "scene", "music", "score", "long", "short", "love", "hate", "charm", "mess", "gem"),
    *(
        "warm",
        "cold",
        "smart",
        "silly",
        "tender",
        "brutal",
        "sweet",
        "sour",
        "fresh",
        "stale",
        "clever",
        "lazy",
    ),
    *("bold", "timid", "rich", "poor"),
]
STOP = ["the", "a", "is", "not", "very", "and", "of", "it", "this"]
PIECES = ["##s", "##ly", "##ing", "##ness"]
PUNCTUATION = ["!", ".", ",", "42"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *STOP, *CONTENT, *PIECES, *PUNCTUATION]
MAX_LENGTH = 64
NO_METHODS = {"replace_prob": 0.0, "mask_prob": 0.0, "ngram_prob": 0.0}


def tiny_tokenizer(max_length: int = MAX_LENGTH) -> SentenceTokenizer:
    backend = tokenizers.Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    backend.enable_truncation(max_length)
    return SentenceTokenizer(backend, 0, max_length)


def sentences(n: int, seed: int = 0) -> tuple[str, ...]:
    """Random sentences of 3-12 words: content, stop words, multi-piece words and punctuation."""
    rng = np.random.default_rng(seed)
    words = CONTENT + STOP + ["movies", "boldly", "charming", "sweetness", "!", ",", "42"]
    return tuple(" ".join(rng.choice(words, rng.integers(3, 13))) for _ in range(n))


def train_split(n: int = 40, seed: int = 0) -> TextSplit:
    return TextSplit("train", sentences(n, seed), np.arange(n, dtype=np.int32) % 2)


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher(vocab_size=len(VOCAB), max_position_embeddings=128)


def table_of(teacher) -> np.ndarray:
    return np.asarray(teacher.encoder.embeddings.word.weight)


def built(train: TextSplit, teacher, settings: AugmentSettings, seed: int = 0, tokenizer=None):
    """A pool made in memory from the parts, with what went into it."""
    tokenizer = tokenizer or tiny_tokenizer()
    split = tokenize_split(train, tokenizer)
    vocab = vocabulary(tokenizer)
    words = split_words(split, vocab)
    table = table_of(teacher)
    candidates = word_candidates(
        split, words, table, vocab, vocabulary_neighbours(table, vocab, settings.neighbours)
    )
    made, summary = pool.make_pool(split, words, candidates, vocab, settings, seed, progress=False)
    return made, summary, split, words, vocab, candidates


def variant(made, j: int) -> np.ndarray:
    return np.asarray(made.split.token_ids[made.split.offsets[j] : made.split.offsets[j + 1]])


def word_tokens(ids: np.ndarray, vocab) -> list[list[int]]:
    """The words (lists of ids) of one ``[CLS] ... [SEP]`` sequence."""
    out: list[list[int]] = []
    for i in ids[1:-1].tolist():
        if vocab.continuation[i] and out:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def test_words_and_eligibility():
    tokenizer = tiny_tokenizer()
    split = tokenize_split(
        TextSplit("train", ("the movies are boldly good ! 42",), np.zeros(1, np.int32)), tokenizer
    )
    vocab = vocabulary(tokenizer)
    words = split_words(split, vocab)
    texts = [words.text(split, vocab, w) for w in range(len(words))]
    # "are" is not in the vocabulary: [UNK], a word that is not alphabetic.
    assert texts == ["the", "movies", "[UNK]", "boldly", "good", "!", "42"]
    assert words.pieces.tolist() == [1, 2, 1, 2, 1, 1, 1]
    assert words.eligible.tolist() == [False, True, False, True, True, False, False]
    assert not vocab.replaceable[[VOCAB.index(w) for w in STOP + PIECES + PUNCTUATION]].any()


def test_neighbours_are_the_cosine_top_m_among_whole_words(teacher):
    tokenizer = tiny_tokenizer()
    vocab = vocabulary(tokenizer)
    table = table_of(teacher)
    found = vocabulary_neighbours(table, vocab, 5)
    candidates = np.flatnonzero(vocab.replaceable)
    unit = np.zeros_like(table)
    unit[candidates] = table[candidates] / np.linalg.norm(table[candidates], axis=1, keepdims=True)
    for i in candidates:
        others = candidates[candidates != i]
        expected = others[np.argsort(-(unit[others] @ unit[i]))[:5]]
        np.testing.assert_array_equal(found[i], expected)
    assert (found[~vocab.replaceable] == -1).all()


def test_replacement_uses_the_top_m_and_never_touches_stop_words_or_punctuation(teacher):
    settings = AugmentSettings(copies=6, neighbours=4, replace_prob=1.0, mask_prob=0.0, ngram_prob=0.0)
    made, summary, split, words, vocab, (row, table) = built(train_split(), teacher, settings)
    assert summary.replaced > 0
    for j, source in enumerate(made.sources.tolist()):
        original = word_tokens(
            np.asarray(split.token_ids[split.offsets[source] : split.offsets[source + 1]]), vocab
        )
        new = word_tokens(variant(made, j), vocab)
        assert len(new) == len(original)
        for w, (before, after) in enumerate(zip(original, new)):
            global_word = words.offsets[source] + w
            if words.eligible[global_word]:
                assert after[0] in table[row[global_word]] and len(after) == 1
                assert after != before
            else:
                assert after == before


def test_mask_rate(teacher):
    """On a long sentence every word is masked with probability mask_prob, replacement and n-grams off."""
    long = TextSplit("train", (" ".join(CONTENT * 12),), np.zeros(1, np.int32))
    settings = AugmentSettings(copies=40, **(NO_METHODS | {"mask_prob": 0.1}))
    made = built(long, teacher, settings, tokenizer=tiny_tokenizer(1024))[0]
    n_words = len(CONTENT) * 12
    assert made.split.lengths.tolist() == [n_words + 2] * 40
    rate = (np.asarray(made.split.token_ids) == VOCAB.index("[MASK]")).sum() / (40 * n_words)
    # 19,680 Bernoulli(0.1) draws: the standard error is 0.002.
    assert abs(rate - 0.1) < 0.01


def test_ngram_sampling_keeps_one_contiguous_ngram_of_1_to_5_words(teacher):
    settings = AugmentSettings(copies=20, **(NO_METHODS | {"ngram_prob": 1.0}))
    made, _, split, _, vocab, _ = built(train_split(), teacher, settings)
    lengths = set()
    for j, source in enumerate(made.sources.tolist()):
        original = word_tokens(
            np.asarray(split.token_ids[split.offsets[source] : split.offsets[source + 1]]), vocab
        )
        new = word_tokens(variant(made, j), vocab)
        lengths.add(len(new))
        assert any(original[s : s + len(new)] == new for s in range(len(original) - len(new) + 1))
    assert lengths == {1, 2, 3, 4, 5}


def test_deterministic_for_a_seed_and_independent_of_chunking(teacher, monkeypatch):
    settings = AugmentSettings(copies=5)
    first = built(train_split(), teacher, settings, seed=3)[0]
    monkeypatch.setattr(pool, "CHUNK", 7)
    chunked = built(train_split(), teacher, settings, seed=3)[0]
    other_seed = built(train_split(), teacher, settings, seed=4)[0]
    for a, b in ((first, chunked),):
        np.testing.assert_array_equal(a.sources, b.sources)
        np.testing.assert_array_equal(a.split.token_ids, b.split.token_ids)
        np.testing.assert_array_equal(a.split.offsets, b.split.offsets)
    assert not np.array_equal(first.split.token_ids, other_seed.split.token_ids)


def test_variants_are_distinct_from_each_other_and_from_every_train_example(teacher):
    train = train_split(30)
    # Duplicate sentences in the train set, and short ones, give many repeated variants.
    train = TextSplit(
        "train", train.sentences + train.sentences[:5] + ("good", "bad !"), np.zeros(37, np.int32)
    )
    made, summary, split, *_ = built(train, teacher, AugmentSettings(copies=20))
    seqs = [variant(made, j).tobytes() for j in range(len(made.sources))]
    originals = {
        np.asarray(split.token_ids[a:b]).tobytes() for a, b in zip(split.offsets[:-1], split.offsets[1:])
    }
    assert len(set(seqs)) == len(seqs)
    assert not set(seqs) & originals
    assert summary.variants == len(seqs) < summary.tried == 37 * 20
    np.testing.assert_array_equal(made.split.labels, train.labels[made.sources])


def test_only_the_train_split_is_accepted(teacher, tmp_path):
    dev = dataclasses.replace(train_split(), name="dev")
    with pytest.raises(AugmentError, match="train split only"):
        augmented_pool(
            dev, tiny_tokenizer(), teacher, AugmentSettings(copies=2), tmp_path, 0, log=lambda _: None
        )


def test_settings_are_validated():
    with pytest.raises(AugmentError, match="sum must be at most 1"):
        AugmentSettings(replace_prob=0.95, mask_prob=0.1)
    with pytest.raises(AugmentError, match="expected one of"):
        AugmentSettings(candidates="glove")
    with pytest.raises(AugmentError, match="needs masked_lm"):
        AugmentSettings(candidates="mlm")


def test_the_key_names_the_folder_and_a_pool_is_reused(teacher, tmp_path):
    messages = []
    tokenizer = tiny_tokenizer()
    settings = AugmentSettings(copies=3)

    def make(train=None, settings=settings, seed=0):
        made = augmented_pool(
            train or train_split(), tokenizer, teacher, settings, tmp_path, seed, log=messages.append
        )
        return made, messages[-1]

    first, said = make()
    assert "saved" in said
    again, said = make()
    assert "read" in said and isinstance(again.split.token_ids, np.memmap)
    np.testing.assert_array_equal(first.split.token_ids, again.split.token_ids)
    np.testing.assert_array_equal(first.sources, again.sources)
    for change in (
        {"seed": 1},
        {"settings": AugmentSettings(copies=4)},
        {"settings": AugmentSettings(copies=3, mask_prob=0.2)},
        {"train": train_split(seed=1)},
    ):
        _, said = make(**change)
        assert "saved" in said, change
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 5 and all(re.fullmatch("[0-9a-f]{64}", p.name) for p in folders)
    # One vocabulary-neighbour table serves them all.
    assert len(list(tmp_path.glob("neighbours-*.npy"))) == 1


def test_a_crash_mid_write_leaves_nothing_a_later_run_reads(teacher, tmp_path, monkeypatch):
    real_save, calls = np.save, []

    def failing_save(file, array, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(file, array, *args, **kwargs)

    settings = AugmentSettings(copies=2, neighbours=3)
    tokenizer = tiny_tokenizer()
    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        augmented_pool(train_split(), tokenizer, teacher, settings, tmp_path, 0, log=lambda _: None)
    monkeypatch.setattr(np, "save", real_save)
    # The neighbour table (first save) is complete; no pool folder or temporary file remains.
    assert [p.name.startswith("neighbours-") for p in tmp_path.iterdir()] == [True]
    table_path = next(tmp_path.iterdir())
    messages = []
    made = augmented_pool(train_split(), tokenizer, teacher, settings, tmp_path, 0, log=messages.append)
    assert "saved" in messages[-1]
    reread = load_pool(next(p for p in tmp_path.iterdir() if p.is_dir()))
    np.testing.assert_array_equal(made.split.token_ids, reread.split.token_ids)
    assert table_path.is_file()


# The masked-LM candidates, on a tiny random BertForMaskedLM saved by transformers.


@pytest.fixture(scope="module")
def masked_lm_dir(tmp_path_factory):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=160,
    )
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    folder = tmp_path_factory.mktemp("tiny_mlm")
    model.save_pretrained(folder)
    return folder


def test_masked_lm_logits_match_transformers(masked_lm_dir):
    import jax.numpy as jnp
    import torch
    import transformers

    reference = transformers.BertForMaskedLM.from_pretrained(masked_lm_dir).eval()
    ours = load_masked_lm(masked_lm_dir)
    ids = np.array([2, 9, 20, 4, 31, 3, 20, 25, 31, 3], np.int32)
    types = np.array([0] * 6 + [1] * 4, np.int32)
    with torch.no_grad():
        expected = reference(
            torch.tensor(ids[None]).long(), token_type_ids=torch.tensor(types[None]).long()
        ).logits[0]
    for position in (3, 7):
        got = ours(jnp.asarray(ids), jnp.ones(10, bool), jnp.asarray(types), jnp.asarray(position, jnp.int32))
        np.testing.assert_allclose(np.asarray(got), expected[position].numpy(), atol=1e-4)


def test_masked_lm_candidates_are_transformers_top_m_in_context_whatever_the_batch(masked_lm_dir):
    import torch
    import transformers

    tokenizer = tiny_tokenizer()
    split = tokenize_split(train_split(6), tokenizer)
    vocab = vocabulary(tokenizer)
    words = split_words(split, vocab)
    empty = (np.full(len(words), -1, np.int64), np.zeros((0, 4), np.int32))

    def candidates(batch_size):
        settings = AugmentSettings(
            neighbours=4, candidates="mlm", masked_lm=str(masked_lm_dir), mlm_batch_size=batch_size
        )
        return masked_lm_candidates(split, words, vocab, empty, settings, lambda _: None)

    row, table = candidates(3)
    np.testing.assert_array_equal(table, candidates(64)[1])
    reference = transformers.BertForMaskedLM.from_pretrained(masked_lm_dir).eval()
    single = np.flatnonzero(words.eligible & (words.pieces == 1))
    assert len(single) > 10 and (row[single] >= 0).all() and (row[words.pieces > 1] == -1).all()
    for w in single:
        example = int(np.searchsorted(words.offsets, w, side="right") - 1)
        ids = np.asarray(split.token_ids[split.offsets[example] : split.offsets[example + 1]])
        position = int(words.starts[w] - split.offsets[example])
        masked = ids.copy()
        masked[position] = vocab.mask_id
        pair = np.concatenate([masked, ids[1:]])
        types = np.r_[np.zeros(len(ids)), np.ones(len(ids) - 1)]
        with torch.no_grad():
            logits = reference(
                torch.tensor(pair[None]).long(), token_type_ids=torch.tensor(types[None]).long()
            )
        scores = logits.logits[0, position].numpy()
        allowed = vocab.replaceable.copy()
        allowed[ids[position]] = False
        expected = np.flatnonzero(allowed)[np.argsort(-scores[allowed], kind="stable")[:4]]
        np.testing.assert_array_equal(table[row[w]], expected)


def test_the_mlm_source_makes_a_pool(teacher, masked_lm_dir, tmp_path):
    settings = AugmentSettings(copies=4, neighbours=4, candidates="mlm", masked_lm=str(masked_lm_dir))
    made = augmented_pool(
        train_split(8), tiny_tokenizer(), teacher, settings, tmp_path, 0, log=lambda _: None
    )
    plain = augmented_pool(
        train_split(8),
        tiny_tokenizer(),
        teacher,
        dataclasses.replace(settings, candidates="neighbours", masked_lm=None),
        tmp_path,
        0,
        log=lambda _: None,
    )
    assert len(made.sources) > 0
    assert not np.array_equal(made.split.token_ids, plain.split.token_ids)


def test_a_read_pool_batches_like_any_split(teacher, tmp_path):
    from distilbert_eqx.data import default_length_buckets, train_batches

    settings = AugmentSettings(copies=3)
    augmented_pool(train_split(), tiny_tokenizer(), teacher, settings, tmp_path, 0, log=lambda _: None)
    made = augmented_pool(train_split(), tiny_tokenizer(), teacher, settings, tmp_path, 0, log=lambda _: None)
    batches = list(train_batches(made.split, 8, default_length_buckets(MAX_LENGTH), seed=0, epoch=0))
    assert sum(int(b.weights.sum()) for b in batches) == len(made.sources)
    assert all(b.input_ids.dtype == np.int32 and b.attention_mask[:, 0].all() for b in batches)
