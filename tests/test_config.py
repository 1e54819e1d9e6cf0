"""TrainConfig: the contract keys, the demo defaults, typed and range-checked assignment."""

import pytest

from expkit import config as cfg
from expkit.errors import ConfigError, UsageError

CONTRACT_KEYS = (
    "model_type hidden_size num_hidden_layers num_attention_heads num_key_value_heads vocab_size max_seq_len "
    "knowledge_num batch_size accumulation_steps learning_rate warmup_steps max_steps weight_decay grad_clip dtype "
    "seed log_interval eval_interval save_interval keep_top_k data_path tokenizer_path device cuda_devices "
    "swanlab_mode swanlab_project"
).split()


def test_contract_keys_exist():
    assert set(CONTRACT_KEYS) <= set(cfg.field_names())


def test_defaults_are_the_cpu_demo_shape():
    c = cfg.TrainConfig()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.max_seq_len, c.batch_size) == (128, 2, 4, 128, 16)
    assert c.learning_rate == 3e-3
    assert c.swanlab_mode == "offline"
    assert c.data_path == c.tokenizer_path == cfg.EMBEDDED


def test_unknown_key_is_forbidden_and_suggests():
    with pytest.raises(ConfigError, match="did you mean learning_rate"):
        cfg.apply(cfg.TrainConfig(), ["lerning_rate=1e-3"])
    with pytest.raises(ConfigError, match="unknown key"):
        cfg.validate({"bogus": 1})


def test_values_are_typed_and_range_checked():
    new, changed = cfg.apply(cfg.TrainConfig(), ["learning_rate=8e-5", "max_steps=1e4", "model_type=model_moe"])
    assert new["learning_rate"] == 8e-5 and new["max_steps"] == 10000 and new["model_type"] == "model_moe"
    assert changed["learning_rate"] == (3e-3, 8e-5)
    for bad in ["learning_rate=-1", "learning_rate=abc", "max_steps=2.5", "model_type=gpt", "swanlab_mode=online", "dropout=1"]:
        with pytest.raises(ConfigError):
            cfg.apply(cfg.TrainConfig(), [bad])


def test_shape_rules():
    with pytest.raises(ConfigError, match="divisible"):
        cfg.apply(cfg.TrainConfig(), ["num_attention_heads=3"])
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        cfg.apply(cfg.TrainConfig(), ["num_key_value_heads=3"])
    with pytest.raises(ConfigError, match="warmup_steps"):
        cfg.apply(cfg.TrainConfig(), ["warmup_steps=700"])


def test_knowledge_num_factors_into_product_keys():
    assert cfg.product_key_shape(1048576) == (1024, 1024)
    assert cfg.product_key_shape(2097152) == (2048, 1024)  # "2M entries" is a real setting
    cfg.apply(cfg.TrainConfig(), ["model_type=model", "knowledge_num=2097152"])
    with pytest.raises(ConfigError, match="near-square"):
        cfg.apply(cfg.TrainConfig(), ["model_type=model", "knowledge_num=1000003"])


def test_assignment_syntax_is_a_usage_error():
    with pytest.raises(UsageError):
        cfg.apply(cfg.TrainConfig(), ["learning_rate"])
    with pytest.raises(UsageError):
        cfg.apply(cfg.TrainConfig(), ["=3"])


def test_nullable_and_diff():
    new, _ = cfg.apply(cfg.TrainConfig(), ["intermediate_size=512"])
    assert cfg.TrainConfig(**new).ffn_size == 512
    back, _ = cfg.apply(new, ["intermediate_size=none"])
    assert back["intermediate_size"] is None and cfg.TrainConfig(**back).ffn_size == 384
    assert cfg.diff(cfg.TrainConfig().model_dump(), new) == {"intermediate_size": (None, 512)}
