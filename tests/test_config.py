"""The experiment config: defaults, YAML loading, overrides, and the error for every kind of bad value."""

import argparse
import dataclasses
import json
import re

import pytest
import yaml

from distilbert_eqx.config import (
    ConfigError,
    ExperimentConfig,
    add_config_args,
    config_from_args,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
)
from distilbert_eqx.experiment import compute_dtype, eval_batch_size, length_buckets
from helpers import REPO

# The parameter table of the original Flax experiment (dtype normalised, output_dir moved under runs/).
ORIGINAL = {
    "dataset_id": "glue/sst2",
    "tokenizer_name": "bert-base-uncased",
    "max_length": 128,
    "teacher_model": "textattack/bert-base-uncased-SST-2",
    "student_model": "distilbert-base-uncased",
    "dtype": "bfloat16",
    "learning_rate": 1e-5,
    "batch_size": 32,
    "num_epochs": 3,
    "weight_decay": 0.01,
    "warmup_ratio": 0.06,
    "optimizer": "adamw",
    "seed": 42,
    "resume_from_checkpoint": False,
    "temperature": 2.0,
    "alpha_kl": 0.45,
    "alpha_ce": 1.0,
    "alpha_cos": 0.1,
    "use_wandb": False,
    "experiment_name": "Flax DistilBERT on SST-2",
    "project_name": "bert-distillation",
    "job_name": "distillation",
    "log_every": 100,
    "log_val_every": 100,
    "do_checkpoint": False,
    "checkpoint_every": 100,
    "keep_top_k_checkpoints": 2,
    "output_dir": "runs/distill_sst2",
}

ADDITIONS = {
    "overwrite_output_dir": False,
    "data_dir": None,
    "max_steps": 0,
    "num_devices": 1,
    "platform": None,
    "student_init_layers": None,
    "length_buckets": None,
    "group_by_length": False,
    "max_grad_norm": 1.0,
    "dropout": True,
    "eval_batch_size": None,
    "coordinator_address": None,
    "num_processes": 1,
    "process_id": 0,
    "alpha_hidden": 0.0,
    "hidden_loss": "mse",
    "alpha_attention_scores": 0.0,
    "alpha_attention_kl": 0.0,
    "alpha_value_relation": 0.0,
    "relation_heads": None,
    "layer_map": None,
    "hidden_projection": None,
    "intermediate_steps": 0,
    "student_num_layers": None,
    "student_hidden_size": None,
    "student_num_heads": None,
    "student_intermediate_size": None,
    "student_embedding_init": "random",
    "teacher_cache": "off",
    "teacher_cache_dir": "runs/teacher_cache",
    "teacher_cache_dtype": "float32",
    "teacher_cache_max_gb": 8.0,
    "ensemble_teachers": None,
    "compilation_cache_dir": None,
    "loss": None,
    "augment": None,
    "augment_seed": 0,
    "augment_dir": "runs/augment",
    "packing": None,
}


def test_defaults_match_the_original_table():
    """But for dtype: the original's bfloat16 is slower than float32 on a CPU, so the default follows the
    platform (the original experiment's config file keeps its bfloat16)."""
    assert config_to_dict(ExperimentConfig()) == {**ORIGINAL, **ADDITIONS, "dtype": "auto"}
    assert load_config(None) == ExperimentConfig()
    assert load_config(REPO / "experiments/configs/sst2_bert_base.yaml").dtype == "bfloat16"


@pytest.mark.parametrize(
    ("dtype", "backend", "expected"),
    [
        ("auto", "cpu", "float32"),
        ("auto", "gpu", "bfloat16"),
        ("auto", "tpu", "bfloat16"),
        ("auto", "tt", "bfloat16"),
        ("bfloat16", "cpu", "bfloat16"),
        ("float32", "gpu", "float32"),
    ],
)
def test_dtype_auto_follows_the_platform(dtype, backend, expected):
    assert load_config(None, [f"dtype={dtype}"]).dtype == dtype
    assert compute_dtype(dtype, backend) == expected


def test_original_yaml_loads(tmp_path):
    # The original file's spellings: jax.bfloat16, and 1e-5, which PyYAML alone reads as a string.
    text = "".join(
        f"{k}: {json.dumps(v)}\n" for k, v in ORIGINAL.items() if k not in ("dtype", "learning_rate")
    )
    path = tmp_path / "original.yaml"
    path.write_text(text + "dtype: jax.bfloat16\nlearning_rate: 1e-5\n")
    assert load_config(path) == ExperimentConfig(dtype="bfloat16")


def test_yaml_lists_become_tuples_and_ints_become_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("student_init_layers: [0, 2, 4]\nlength_buckets: [32, 128]\ntemperature: 3\n")
    config = load_config(path)
    assert config.student_init_layers == (0, 2, 4)
    assert config.length_buckets == (32, 128)
    assert config.temperature == 3.0 and isinstance(config.temperature, float)


@pytest.mark.parametrize("spelling", ["bfloat16", "jax.bfloat16", "jnp.bfloat16", "jax.numpy.bfloat16"])
def test_bfloat16_spellings(spelling):
    assert load_config(None, [f"dtype={spelling}"]).dtype == "bfloat16"


@pytest.mark.parametrize("spelling", ["float32", "jax.float32", "jnp.float32"])
def test_float32_spellings(spelling):
    assert load_config(None, [f"dtype={spelling}"]).dtype == "float32"


def test_overrides_are_yaml_and_apply_after_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 16\ndata_dir: /somewhere\n")
    config = load_config(
        path,
        [
            "batch_size=8",
            "student_init_layers=[0,2,4]",
            "dtype=float32",
            "data_dir=null",
            "learning_rate=5e-5",
            "use_wandb=true",
            "job_name=123",
            "platform=cpu",
        ],
    )
    assert config.batch_size == 8
    assert config.student_init_layers == (0, 2, 4)
    assert config.dtype == "float32"
    assert config.data_dir is None
    assert config.learning_rate == 5e-5
    assert config.use_wandb is True
    assert config.job_name == "123"
    assert config.platform == "cpu"


def test_override_value_may_contain_equals():
    assert parse_override("experiment_name=a=b") == ("experiment_name", "a=b")


@pytest.mark.parametrize("override", ["batch_size", "=3", "  =3"])
def test_malformed_override(override):
    with pytest.raises(ConfigError, match="malformed override.*key=value"):
        load_config(None, [override])


def test_unknown_key_in_file_lists_valid_keys_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'lerning_rate'" in message and str(path) in message
    assert "Did you mean 'learning_rate'?" in message
    assert all(f.name in message for f in dataclasses.fields(ExperimentConfig))


def test_unknown_key_in_override():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'batchsize' in override.*'batch_size'.*Valid keys"
    ):
        load_config(None, ["batchsize=3"])


def test_non_mapping_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_a_key_given_twice_names_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 16\nseed: 1\nbatch_size: 32\n")
    with pytest.raises(ConfigError, match=r"c\.yaml'.*key 'batch_size' appears twice, on lines 1 and 3"):
        load_config(path)


def test_a_non_utf8_byte_names_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"seed: 1\njob_name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: not UTF-8 text"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("")
    assert load_config(path) == ExperimentConfig()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("batch_size=abc", r"batch_size='abc' has type str; expected int"),
        ("batch_size=2.5", r"batch_size=2.5 has type float; expected int"),
        ("batch_size=true", r"batch_size=True has type bool; expected int"),
        ("learning_rate=fast", r"learning_rate='fast' has type str; expected float"),
        ("use_wandb=3", r"use_wandb=3 has type int; expected bool"),
        ("student_init_layers=[0, a]", r"student_init_layers=\[0, 'a'\].*expected a list of int or null"),
        ("eval_batch_size=x", r"eval_batch_size='x'.*expected int or null"),
        ("data_dir=[1]", r"data_dir=\[1\].*expected str or null"),
    ],
)
def test_wrong_types_name_key_value_and_type(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("batch_size=0", "batch_size"),
        ("num_epochs=-1", "num_epochs"),
        ("max_length=1", "max_length"),
        ("log_every=0", "log_every"),
        ("log_val_every=0", "log_val_every"),
        ("checkpoint_every=0", "checkpoint_every"),
        ("keep_top_k_checkpoints=0", "keep_top_k_checkpoints"),
        ("eval_batch_size=0", "eval_batch_size"),
        ("max_steps=-1", "max_steps"),
        ("seed=-1", "seed"),
        ("learning_rate=0", "learning_rate"),
        ("weight_decay=-0.1", "weight_decay"),
        ("warmup_ratio=1.0", "warmup_ratio"),
        ("warmup_ratio=-0.1", "warmup_ratio"),
        ("temperature=0", "temperature"),
        ("alpha_kl=-1", "alpha_kl"),
        ("optimizer=sgd", "optimizer"),
        ("max_grad_norm=0", "max_grad_norm"),
        ("max_grad_norm=-1.0", "max_grad_norm"),
        ("dtype=float16", "dtype"),
        ("platform=cuda", "platform"),
        ("dataset_id=glue/cola", "dataset_id"),
        ("output_dir=''", "output_dir"),
        ("data_dir=''", "data_dir"),
        ("num_devices=0", "num_devices"),
        ("num_processes=0", "num_processes"),
        ("process_id=1", "process_id"),
        ("num_devices=3", "batch_size"),
        ("student_init_layers=[]", "student_init_layers"),
        ("student_init_layers=[-1, 2]", "student_init_layers"),
        ("student_init_layers=[0, 2, 2]", "student_init_layers"),
        ("length_buckets=[]", "length_buckets"),
        ("length_buckets=[64, 32, 128]", "length_buckets"),
        ("length_buckets=[0, 128]", "length_buckets"),
        ("length_buckets=[32, 64]", "length_buckets"),
        ("length_buckets=[32, 256]", "length_buckets"),
        ("alpha_hidden=-1", "alpha_hidden"),
        ("alpha_value_relation=-0.5", "alpha_value_relation"),
        ("hidden_loss=l1", "hidden_loss"),
        ("relation_heads=0", "relation_heads"),
        ("layer_map=[]", "layer_map"),
        ("layer_map=[[0, -1]]", "layer_map"),
        ("layer_map=[[0, 1, 2]]", "layer_map"),
        ("intermediate_steps=-1", "intermediate_steps"),
        ("student_num_layers=0", "student_num_layers"),
        ("student_hidden_size=-8", "student_hidden_size"),
        ("teacher_cache=yes", "teacher_cache"),
        ("teacher_cache_dtype=float16", "teacher_cache_dtype"),
        ("teacher_cache_max_gb=0", "teacher_cache_max_gb"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, key):
    with pytest.raises(ConfigError, match=f"^{key}=.*expected"):
        load_config(None, [override])


def test_the_teacher_cache_is_refused_on_several_hosts():
    with pytest.raises(ConfigError, match="^teacher_cache='disk' .*expected off with num_processes=2"):
        load_config(None, ["teacher_cache=disk", "num_processes=2", "num_devices=2"])


def test_bad_value_message_in_full():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["length_buckets=[32, 64]"])
    assert str(info.value) == (
        "length_buckets=(32, 64) is invalid; expected null or a strictly increasing list of lengths >= 1 "
        "ending at max_length=128"
    )


def test_all_alphas_zero_rejected():
    with pytest.raises(
        ConfigError,
        match=r"alpha_ce/alpha_kl/alpha_cos/alpha_hidden/.*=\(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0\).*at least one",
    ):
        load_config(None, ["alpha_kl=0", "alpha_ce=0", "alpha_cos=0"])


def test_devices_must_divide_across_processes():
    with pytest.raises(
        ConfigError, match=r"^num_devices=6 is invalid; expected a multiple of num_processes=4"
    ):
        load_config(None, ["num_processes=4", "num_devices=6"])


def test_eval_batch_size_must_divide_across_processes():
    with pytest.raises(
        ConfigError, match="^eval_batch_size=6 is invalid; expected a multiple of num_devices=4"
    ):
        load_config(None, ["num_processes=4", "num_devices=4", "eval_batch_size=6"])


def test_direct_construction_requires_canonical_values():
    assert ExperimentConfig(dtype="float32", student_init_layers=(0, 2)).student_init_layers == (0, 2)
    with pytest.raises(ConfigError, match="max_steps=-3"):
        ExperimentConfig(max_steps=-3)


def test_config_from_dict_accepts_yaml_spellings():
    config = config_from_dict({"dtype": "jax.float32", "length_buckets": [64, 128], "learning_rate": 1})
    assert (config.dtype, config.length_buckets, config.learning_rate) == ("float32", (64, 128), 1.0)


def test_config_to_dict_round_trips_through_yaml_and_json(tmp_path):
    config = load_config(None, ["student_init_layers=[0,2,4]", "length_buckets=[32,128]", "data_dir=/d"])
    values = config_to_dict(config)
    assert json.loads(json.dumps(values)) == values
    path = tmp_path / "saved.yaml"
    path.write_text(yaml.safe_dump(values))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("max_length", "expected"),
    [
        (128, (8, 12, 16, 24, 32, 48, 64, 96, 128)),
        (100, (8, 12, 16, 24, 32, 48, 64, 96, 100)),
        (16, (8, 12, 16)),
        (8, (8,)),
        (5, (5,)),
        (13, (8, 12, 13)),
        (512, (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)),
    ],
)
def test_default_length_buckets(max_length, expected):
    assert length_buckets(ExperimentConfig(max_length=max_length)) == expected


def test_explicit_length_buckets():
    assert length_buckets(ExperimentConfig(length_buckets=(48, 128))) == (48, 128)


def test_eval_batch_size_falls_back_to_batch_size():
    assert eval_batch_size(ExperimentConfig(batch_size=16)) == 16
    assert eval_batch_size(ExperimentConfig(batch_size=16, eval_batch_size=64)) == 64


def test_command_line_arguments(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 16\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(
        ["--config", str(path), "--set", "num_epochs=1", "seed=7", "--set", "max_steps=2"]
    )
    config = config_from_args(args)
    assert (config.batch_size, config.num_epochs, config.seed, config.max_steps) == (16, 1, 7, 2)
    assert config_from_args(parser.parse_args([])) == ExperimentConfig()


@pytest.mark.parametrize("path", sorted((REPO / "experiments/configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config_to_dict(config).keys() == config_to_dict(ExperimentConfig()).keys()


def test_removed_study_keys_are_unknown():
    for key in ("group_fraction", "cosine_normalizer", "group_chunk_batches"):
        with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
            load_config(None, [f"{key}=1"])


def test_layer_map_is_pairs_and_round_trips(tmp_path):
    config = load_config(None, ["layer_map=[[0, 0], [1, 2], [3, 6]]", "alpha_hidden=1"])
    assert config.layer_map == ((0, 0), (1, 2), (3, 6))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["intermediate_steps=10", "alpha_cos=0"], r"a term other than \['ce', 'kl'\] for the first stage"),
        (
            ["intermediate_steps=10", "alpha_ce=0", "alpha_kl=0"],
            r"one of the terms \['ce', 'kl'\] for the second stage",
        ),
        (["intermediate_steps=10", "max_steps=10"], "fewer than max_steps=10"),
        (["student_init_layers=[0, 2]", "student_hidden_size=192"], "one way to make the student"),
        (["student_embedding_init=teacher_pca"], "random unless the student is built at random"),
        (["student_embedding_init=pca", "student_hidden_size=192"], "one of random, teacher_pca"),
    ],
)
def test_inconsistent_layer_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_loss_list_spells_the_same_terms_as_the_flat_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "loss:\n  - {type: ce, weight: 1}\n  - {type: kl, weight: 0.45, temperature: 2}\n  - {type: cos, weight: 0.1}\n"
    )
    config = load_config(path)
    assert config.terms == ExperimentConfig().terms
    assert [type(t).__name__ for t in config.terms] == ["CE", "KL", "Cos"]
    # Written to config.json and read back unchanged, the settings of every term included.
    layers = load_config(
        None,
        [
            (
                "loss=[{type: hidden, weight: 1, layer_map: [[0, 0], [1, 2]], reduction: sum}, "
                "{type: attention_scores, weight: 0.5}]"
            )
        ],
    )
    path.write_text(yaml.safe_dump(config_to_dict(layers)))
    assert load_config(path) == layers
    assert config_to_dict(layers)["loss"][0] == {
        "type": "hidden",
        "weight": 1.0,
        "distance": "mse",
        "layer_map": [[0, 0], [1, 2]],
        "reduction": "sum",
    }
    assert layers.terms[1].layer_map == "uniform"


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (
            "[{type: kll, weight: 1}]",
            r"^loss\[0\]: unknown term type 'kll'. Did you mean 'kl'\? Types: ce, kl, ",
        ),
        ("[{type: kl, wieght: 1}]", r"^unknown key 'wieght' in loss\[0\] \(kl\). Did you mean 'weight'\?"),
        ("[{type: kl, temperature: hot}]", r"^loss\[0\].temperature='hot' has type str; expected float"),
        ("[{type: kl, temperature: -1}]", r"^loss\[0\] \(kl\): temperature must be positive, got -1.0"),
        ("[{type: ce, weight: -1}]", r"^loss\[0\] \(ce\): ce: weight=-1.0 is invalid; expected a float >= 0"),
        (
            "[{type: hidden, layer_map: everything}]",
            r"layer_map='everything' is invalid; expected one of \['uniform'\]",
        ),
        ("[{type: hidden, distance: l1}]", r"distance='l1'"),
        ("[{weight: 1}]", r"^loss\[0\]=\{'weight': 1\} is invalid; expected a mapping with a type"),
        ("[{type:kl}]", r"expected a mapping with a type.*put a space after each colon"),
        ("[]", r"^loss=\[\] is invalid; expected null or a non-empty list of terms"),
        ("[{type: ce}, {type: ce}]", r"lists \['ce'\] more than once"),
        ("[{type: ce, weight: 0}]", "at least one loss weight must be positive"),
    ],
)
def test_a_bad_loss_list_names_the_entry_and_what_is_allowed(loss, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"loss={loss}"])


def test_a_loss_list_and_changed_flat_loss_keys_are_one_spelling_too_many():
    with pytest.raises(ConfigError, match=r"^loss=.*\{'alpha_kl': 0.9\} would be ignored"):
        load_config(None, ["loss=[{type: ce}]", "alpha_kl=0.9"])


def test_a_layer_map_no_term_reads_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"^layer_map=\[\[0, 0\]\] is invalid; expected null: no term reads it "
        r"\(alpha_hidden=0, alpha_attention_scores=0\)",
    ):
        load_config(None, ["layer_map=[[0, 0]]"])
    assert load_config(None, ["layer_map=[[0, 0]]", "alpha_hidden=1"]).terms[-1].layer_map == ((0, 0),)


def test_docs_configuration_names_every_key():
    """docs/configuration.md is where the README sends a user for every key: a key added without a line there
    fails here (the nested settings, such as augment's and packing's fields, included)."""
    doc = (REPO / "docs" / "configuration.md").read_text()
    keys = set()
    for field in dataclasses.fields(ExperimentConfig):
        keys.add(field.name)
        nested = [t for t in getattr(field.type, "__args__", (field.type,)) if dataclasses.is_dataclass(t)]
        keys.update(f.name for t in nested for f in dataclasses.fields(t))
    assert {"augment_seed", "replace_prob", "slots"} <= keys  # the walk reaches the nested settings
    missing = sorted(key for key in keys if not re.search(rf"\b{key}\b", doc))
    assert not missing, f"keys not in docs/configuration.md: {missing}"
