"""SST-2 loading, tokenisation and batching: bad data is reported clearly, every example is seen exactly once,
orders are deterministic, and the tokenizer's own padding is never applied."""

import itertools
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from distilbert_eqx import hub
from distilbert_eqx.data import (
    GROUP_CHUNK_BATCHES,
    Batch,
    DataError,
    TextSplit,
    TokenizedSplit,
    bucket_length,
    default_length_buckets,
    epoch_batches,
    eval_batches,
    load_text_split,
    load_tokenizer,
    num_batches,
    padding_stats,
    read_glue_tsv,
    slice_for_process,
    tokenize_split,
    train_batches,
)
from helpers import minilm_dir, sst2_dir

BUCKETS = (4, 8, 16)


def write_tsv(path: Path, rows: list[str], header: str = "sentence\tlabel") -> Path:
    path.write_text("".join(f"{line}\n" for line in [header, *rows]), encoding="utf-8")
    return path


def write_glue_folder(folder: Path) -> Path:
    folder.mkdir()
    write_tsv(folder / "train.tsv", ['he said "wow" , great\t1', '"unbalanced quote\t0', "fine\t1"])
    write_tsv(folder / "dev.tsv", ["bad movie\t0", "good movie\t1"])
    write_tsv(folder / "test.tsv", ["meh\t0"])
    return folder


def synthetic_split(lengths: list[int] | np.ndarray, pad_id: int = 0) -> TokenizedSplit:
    """Example ``i`` has tokens ``i * 1000 + 1, i * 1000 + 2, ...`` (so a row tells which example it holds),
    token type 1 (so copied types differ from padding), and label ``i % 2``."""
    lengths = np.asarray(lengths, np.int64)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    token_ids = np.concatenate([i * 1000 + 1 + np.arange(n) for i, n in enumerate(lengths)]).astype(np.int32)
    labels = (np.arange(len(lengths)) % 2).astype(np.int32)
    return TokenizedSplit("synthetic", labels, offsets, token_ids, np.ones_like(token_ids), pad_id)


def example_of_rows(batch: Batch) -> list[int]:
    """The example index held by each real row (see ``synthetic_split``)."""
    return [int(first) // 1000 for first in batch.input_ids[batch.weights > 0, 0]]


def seen_examples(batches: list[Batch]) -> list[int]:
    return [i for batch in batches for i in example_of_rows(batch)]


def batch_members(batches: list[Batch]) -> set[frozenset[int]]:
    """Which examples went together, whatever the order of the batches and of their rows."""
    return {frozenset(example_of_rows(b)) for b in batches}


def random_lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, 17, size=n)


# Loading local TSVs.


def test_loads_local_glue_folder_keeping_quotes(tmp_path):
    folder = write_glue_folder(tmp_path / "sst2")
    train = load_text_split("train", data_dir=folder)
    assert train.name == "train"
    assert train.sentences == ('he said "wow" , great', '"unbalanced quote', "fine")
    assert train.labels.dtype == np.int32 and train.labels.tolist() == [1, 0, 1]
    assert load_text_split("dev", data_dir=str(folder)).sentences == ("bad movie", "good movie")
    assert load_text_split("test", data_dir=folder).labels.tolist() == [0]


def test_crlf_and_missing_final_newline(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"sentence\tlabel\r\na\t0\r\nb\t1")
    split = read_glue_tsv(path, "dev")
    assert split.sentences == ("a", "b") and split.labels.tolist() == [0, 1]


def test_missing_folder_lists_expected_files(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*not a folder.*train\.tsv, dev\.tsv, test\.tsv"):
        load_text_split("dev", data_dir=tmp_path / "nowhere")


def test_missing_file_lists_expected_files(tmp_path):
    folder = tmp_path / "sst2"
    folder.mkdir()
    write_tsv(folder / "train.tsv", ["x\t1"])
    with pytest.raises(DataError, match=r"dev\.tsv not found.*should hold train\.tsv, dev\.tsv, test\.tsv"):
        load_text_split("dev", data_dir=folder)


def test_unknown_split(tmp_path):
    with pytest.raises(DataError, match=r"unknown split 'validation'.*'train', 'dev', 'test'"):
        load_text_split("validation", data_dir=write_glue_folder(tmp_path / "sst2"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", r"dev\.tsv is empty"),
        ("sentence\tlabel\n", r"dev\.tsv: split 'dev' is empty"),
        ("text\tlabel\na\t0\n", r"dev\.tsv:1: header is \['text', 'label'\]; expected 'sentence<TAB>label'"),
        ("index\tsentence\n0\ta\n", r"dev\.tsv:1: .*GLUE's unlabelled test file"),
        ("sentence\tlabel\na\t0\nb\t1\tx\n", r"dev\.tsv:3: expected 2 tab-separated columns.*found 3"),
        ("sentence\tlabel\na\t0\nno label here\n", r"dev\.tsv:3: expected 2 tab-separated columns.*found 1"),
        ("sentence\tlabel\na\t0\n\nb\t1\n", r"dev\.tsv:3: expected 2 tab-separated columns"),
        ("sentence\tlabel\na\t2\n", r"dev\.tsv:2: label '2' is not 0 or 1"),
        ("sentence\tlabel\na\tpositive\n", r"dev\.tsv:2: label 'positive' is not 0 or 1"),
        ("sentence\tlabel\na\t\n", r"dev\.tsv:2: label '' is not 0 or 1"),
        ("sentence\tlabel\na\t0\n\t1\n", r"dev\.tsv:3: the sentence is empty"),
        ("sentence\tlabel\na\t0\n  \t1\n", r"dev\.tsv:3: the sentence is empty"),
    ],
)
def test_bad_tsv_names_file_and_line(tmp_path, content, expected):
    folder = tmp_path / "sst2"
    folder.mkdir()
    (folder / "dev.tsv").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        load_text_split("dev", data_dir=folder)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"sentence\tlabel\ngood\t1\nbad \xff\t0\n")
    with pytest.raises(DataError, match=r"dev\.tsv:3: not UTF-8 text \(byte b'\\xff' on line 3\)"):
        read_glue_tsv(path, "dev")


# Loading from the hub, through a stand-in for the `datasets` module (no network in tests).


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []
    splits = {
        "train": {"sentence": ["a", "b"], "label": [0, 1]},
        "validation": {"sentence": ["c"], "label": [1]},
        "test": {"sentence": ["d", "e"], "label": [-1, -1]},
    }

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return splits[split]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(hub, "unreachable", lambda: None)
    return calls, splits


def test_hub_split_names_are_mapped(fake_hub):
    calls, _ = fake_hub
    dev = load_text_split("dev", data_dir=None, dataset_id="glue/sst2")
    assert (dev.name, dev.sentences, dev.labels.tolist()) == ("dev", ("c",), [1])
    assert load_text_split("train", data_dir=None).labels.dtype == np.int32
    assert calls == [("glue", "sst2", "validation"), ("glue", "sst2", "train")]


def test_hub_test_split_is_unlabelled(fake_hub):
    with pytest.raises(DataError, match=r"'glue/sst2' split 'test' is unlabelled.*cannot be evaluated"):
        load_text_split("test", data_dir=None)


def test_the_hub_split_fails_at_once_naming_data_dir_when_the_hub_cannot_be_reached(fake_hub, monkeypatch):
    calls, _ = fake_hub
    monkeypatch.setattr(hub, "unreachable", lambda: "no connection to the hub: test")
    with pytest.raises(DataError, match=r"data_dir is null.*cannot be reached \(no connection.*set data_dir"):
        load_text_split("train", data_dir=None)
    assert calls == []


def test_a_hub_tokenizer_fails_at_once_naming_tokenizer_name_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    message = r"tokenizer_name='nobody/no-such-tokenizer' is neither a local folder nor in the hub cache"
    with pytest.raises(DataError, match=message + r".*HF_HUB_OFFLINE.*set tokenizer_name to a local folder"):
        load_tokenizer("nobody/no-such-tokenizer", 128)
    assert time.perf_counter() - started < 10


def test_hub_bad_label(fake_hub):
    _, splits = fake_hub
    splits["train"]["label"] = [0, 7]
    with pytest.raises(DataError, match=r"split 'train' row 1: label 7 is not 0 or 1"):
        load_text_split("train", data_dir=None)


# Buckets and batches (synthetic token ids: no tokenizer needed).


@pytest.mark.parametrize(("length", "bucket"), [(1, 4), (4, 4), (5, 8), (8, 8), (9, 16), (16, 16)])
def test_bucket_length(length, bucket):
    assert bucket_length(length, BUCKETS) == bucket


def test_too_long_for_buckets():
    with pytest.raises(DataError, match="17 tokens does not fit the largest length bucket 16"):
        bucket_length(17, BUCKETS)


def test_eval_batches_in_order_with_padded_last_batch():
    lengths = [3, 5, 2, 16, 1, 4, 7]
    split = synthetic_split(lengths, pad_id=9)
    batches = list(eval_batches(split, 3, BUCKETS))
    assert len(batches) == num_batches(split, 3) == 3
    assert seen_examples(batches) == list(range(7))
    assert [b.input_ids.shape for b in batches] == [(3, 8), (3, 16), (3, 8)]
    for batch in batches:
        assert (batch.input_ids.dtype, batch.attention_mask.dtype, batch.token_type_ids.dtype) == (
            np.int32,
            np.bool_,
            np.int32,
        )
        assert (batch.labels.dtype, batch.weights.dtype) == (np.int32, np.float32)
    first = batches[0]
    np.testing.assert_array_equal(first.input_ids[1, :5], 1001 + np.arange(5))
    np.testing.assert_array_equal(first.input_ids[0], [1, 2, 3, 9, 9, 9, 9, 9])
    np.testing.assert_array_equal(first.attention_mask[2], [True, True] + [False] * 6)
    np.testing.assert_array_equal(first.token_type_ids[2], [1, 1] + [0] * 6)
    np.testing.assert_array_equal(first.labels, [0, 1, 0])
    last = batches[-1]
    np.testing.assert_array_equal(last.weights, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(last.labels, [0, 0, 0])
    np.testing.assert_array_equal(last.attention_mask[1:], [[True] + [False] * 7] * 2)
    np.testing.assert_array_equal(last.input_ids[1:], 9)
    np.testing.assert_array_equal(last.input_ids[0], [6001, 6002, 6003, 6004, 6005, 6006, 6007, 9])


@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize("n", [1, 37, 40, 2 * 100 * 4 + 13])
def test_train_epoch_covers_every_example_once(n, group_by_length):
    split = synthetic_split(random_lengths(n))
    batches = list(train_batches(split, 4, BUCKETS, seed=1, epoch=0, group_by_length=group_by_length))
    assert len(batches) == num_batches(split, 4)
    assert sorted(seen_examples(batches)) == list(range(n))
    assert all(b.input_ids.shape[0] == 4 for b in batches)
    # Only the last batch may be partial.
    assert all(b.weights.all() for b in batches[:-1])
    assert batches[-1].weights.sum() == n - 4 * (len(batches) - 1)
    for batch in batches:
        ids = example_of_rows(batch)
        np.testing.assert_array_equal(batch.attention_mask[batch.weights > 0].sum(1), split.lengths[ids])
        np.testing.assert_array_equal(batch.labels[batch.weights > 0], np.asarray(ids) % 2)
        assert batch.input_ids.shape[1] == bucket_length(int(split.lengths[ids].max()), BUCKETS)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_train_order_depends_only_on_seed_and_epoch(group_by_length):
    split = synthetic_split(random_lengths(900))

    def order(seed: int, epoch: int) -> list[int]:
        return seen_examples(
            list(train_batches(split, 4, BUCKETS, seed=seed, epoch=epoch, group_by_length=group_by_length))
        )

    assert order(3, 0) == order(3, 0)
    assert order(3, 0) != order(3, 1)
    assert order(3, 0) != order(4, 0)
    assert order(3, 0) != list(range(900))


@pytest.mark.parametrize("group_by_length", [False, True])
def test_start_skips_exactly_the_first_batches(group_by_length):
    split = synthetic_split(random_lengths(101))
    kwargs = {"seed": 5, "epoch": 2, "group_by_length": group_by_length}
    full = list(train_batches(split, 8, BUCKETS, **kwargs))
    for start in (0, 1, 7, len(full)):
        resumed = list(train_batches(split, 8, BUCKETS, start=start, **kwargs))
        assert len(resumed) == len(full) - start
        for a, b in zip(full[start:], resumed):
            for field_a, field_b in zip(a, b):
                np.testing.assert_array_equal(field_a, field_b)


def test_start_out_of_range():
    split = synthetic_split([3] * 10)
    with pytest.raises(ValueError, match=r"start=4; expected 0 <= start <= 3"):
        train_batches(split, 4, BUCKETS, seed=0, epoch=0, start=4)


def test_group_by_length_cuts_padding():
    split = synthetic_split(random_lengths(2000))
    plain = padding_stats(train_batches(split, 8, BUCKETS, seed=0, epoch=0))
    grouped = padding_stats(train_batches(split, 8, BUCKETS, seed=0, epoch=0, group_by_length=True))
    assert plain.num_examples == grouped.num_examples == 2000
    assert plain.mean_true_length == pytest.approx(grouped.mean_true_length)
    assert grouped.mean_padded_length < plain.mean_padded_length
    assert grouped.token_efficiency > plain.token_efficiency


def test_grouped_batches_sort_within_chunks_of_group_chunk_batches():
    """Grouping sorts the shuffled examples by length within chunks of GROUP_CHUNK_BATCHES batches: within a
    chunk no two batches' length ranges overlap, and batches of different chunks can."""
    split = synthetic_split(random_lengths(2000))
    batches = list(train_batches(split, 8, BUCKETS, seed=3, epoch=1, group_by_length=True))
    random_order = np.random.default_rng([3, 1]).permutation(len(split))
    chunk_of = {int(e): i // (GROUP_CHUNK_BATCHES * 8) for i, e in enumerate(random_order)}
    for chunk in range(3):
        members = [ids for ids in map(example_of_rows, batches) if chunk_of[int(ids[0])] == chunk]
        assert all(chunk_of[int(e)] == chunk for ids in members for e in ids)
        ranges = sorted((split.lengths[ids].min(), split.lengths[ids].max()) for ids in members)
        assert all(hi <= next_lo for (_, hi), (next_lo, _) in itertools.pairwise(ranges))


def test_epoch_batches_run_on_across_epochs_and_resume_mid_epoch():
    split = synthetic_split(random_lengths(20))
    stream = list(itertools.islice(epoch_batches(split, 8, BUCKETS, seed=5, group_by_length=True), 7))
    epochs = [list(train_batches(split, 8, BUCKETS, seed=5, epoch=e, group_by_length=True)) for e in range(3)]
    assert seen_examples(stream) == seen_examples([b for epoch in epochs for b in epoch][:7])
    resumed = list(
        itertools.islice(epoch_batches(split, 8, BUCKETS, seed=5, group_by_length=True, start_step=4), 3)
    )
    assert seen_examples(resumed) == seen_examples(stream[4:])


def test_padding_stats_by_hand():
    stats = padding_stats(eval_batches(synthetic_split([3, 5, 2, 16, 1, 4, 7]), 3, BUCKETS))
    # Batches padded to 8, 16 and 8 tokens, 3 rows each; 38 real tokens over 7 examples.
    assert stats.num_batches == 3 and stats.num_examples == 7
    assert stats.mean_true_length == pytest.approx(38 / 7)
    assert stats.mean_padded_length == pytest.approx(32 / 3)
    assert stats.token_efficiency == pytest.approx(38 / (3 * 32))
    assert stats.bucket_counts == {8: 2, 16: 1}


def test_take_first_rows():
    split = synthetic_split([3, 5, 2, 6])
    head = split.take(2)
    assert len(head) == 2
    np.testing.assert_array_equal(head.lengths, [3, 5])
    np.testing.assert_array_equal(head.token_ids, split.token_ids[:8])
    assert seen_examples(list(eval_batches(head, 2, BUCKETS))) == [0, 1]
    for n in (0, 5):
        with pytest.raises(DataError, match=f"cannot take {n} examples from split 'synthetic', which has 4"):
            split.take(n)


def test_slice_for_process():
    batch = next(eval_batches(synthetic_split(range(1, 9)), 8, BUCKETS))
    parts = [slice_for_process(batch, i, 4) for i in range(4)]
    assert [example_of_rows(p) for p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    for field, *pieces in zip(jax.tree.leaves(batch), *(jax.tree.leaves(p) for p in parts)):
        np.testing.assert_array_equal(field, np.concatenate(pieces))
    with pytest.raises(ValueError, match="batch of 8 rows cannot be split evenly across num_processes=3"):
        slice_for_process(batch, 0, 3)
    with pytest.raises(ValueError, match="process_id=4"):
        slice_for_process(batch, 4, 4)


# Tokenisation.


@pytest.fixture(scope="module")
def padding_tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny BERT WordPiece tokenizer whose tokenizer.json pads every encoding to 16, like the MiniLM one."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "movie", "very", "!", '"']
    backend = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    backend.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]").save_pretrained(folder)
    return folder


def test_tokenizer_padding_is_switched_off(padding_tokenizer_dir):
    import tokenizers

    sentences = ('a "good" movie !', "Bad", "very very very very very very very very very very good")
    raw = tokenizers.Tokenizer.from_file(str(padding_tokenizer_dir / "tokenizer.json"))
    assert {len(e.ids) for e in raw.encode_batch(list(sentences))} == {16}, "the fixture should pad"
    split = tokenize_split(
        TextSplit("dev", sentences, np.array([1, 0, 1], np.int32)),
        load_tokenizer(str(padding_tokenizer_dir), 8),
    )
    assert split.lengths.tolist() == [8, 3, 8]
    np.testing.assert_array_equal(split.token_ids[:8], [2, 5, 11, 6, 11, 8, 10, 3])
    np.testing.assert_array_equal(split.token_ids[8:11], [2, 7, 3])
    assert split.token_ids[-1] == 3, "truncation keeps [SEP]"
    np.testing.assert_array_equal(split.token_type_ids, 0)
    assert split.pad_id == 0


def test_missing_tokenizer_folder(tmp_path):
    with pytest.raises(DataError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "no_tokenizer_here"), 8)


def test_real_tokenizer_matches_transformers_without_padding():
    folder, data = minilm_dir(), sst2_dir()
    import tokenizers
    import transformers

    text = read_glue_tsv(data / "dev.tsv", "dev")
    sentences = list(text.sentences[:50])
    ours = tokenize_split(
        TextSplit("dev", tuple(sentences), text.labels[:50]), load_tokenizer(str(folder), 128)
    )
    reference = transformers.BertTokenizerFast.from_pretrained(folder)(
        sentences, padding=False, truncation=True, max_length=128
    )
    assert [len(ids) for ids in reference["input_ids"]] == ours.lengths.tolist()
    np.testing.assert_array_equal(ours.token_ids, np.concatenate(reference["input_ids"]))
    np.testing.assert_array_equal(ours.token_type_ids, np.concatenate(reference["token_type_ids"]))
    # The checkpoint's tokenizer.json pads to 128; ours must not.
    raw = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert len(raw.encode(sentences[0]).ids) == 128
    assert ours.lengths.max() < 128
    assert ours.pad_id == 0
    assert next(eval_batches(ours, 50, (16, 32, 64, 128))).input_ids.shape == (50, 64)


def test_real_dev_split_loads():
    dev = load_text_split("dev", data_dir=sst2_dir())
    assert len(dev.sentences) == len(dev.labels) == 872
    assert np.bincount(dev.labels).tolist() == [428, 444]


def test_glue_folder_through_tokenizer_to_batches(tmp_path, padding_tokenizer_dir):
    folder = write_glue_folder(tmp_path / "sst2")
    tokenizer = load_tokenizer(str(padding_tokenizer_dir), 8)
    dev = tokenize_split(load_text_split("dev", data_dir=folder), tokenizer)
    assert (dev.name, dev.lengths.tolist(), dev.labels.tolist()) == ("dev", [4, 4], [0, 1])
    batch = next(eval_batches(dev, 4, default_length_buckets(8)))
    np.testing.assert_array_equal(
        batch.input_ids, [[2, 7, 8, 3, 0, 0, 0, 0], [2, 6, 8, 3, 0, 0, 0, 0]] + [[0] * 8] * 2
    )
