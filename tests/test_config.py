"""SmolLM2Config: presets, validation, the round trip through transformers' LlamaConfig, parameter counts."""

from __future__ import annotations

import json

import pytest
import torch

from smollm2_config import PRESETS, SmolLM2Config, get_config
from smollm2_model import SmolLM2ForCausalLM

# HuggingFaceTB/SmolLM2-135M's public config.json (the fields that define the model).
PUBLIC_CONFIG_JSON = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "intermediate_size": 1536, "rms_norm_eps": 1e-5, "rope_theta": 100000, "rope_scaling": None,
    "max_position_embeddings": 8192, "vocab_size": 49152, "tie_word_embeddings": True,
    "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
    "initializer_range": 0.041666666666666664, "bos_token_id": 0, "eos_token_id": 0,
    "pretraining_tp": 1, "use_cache": True, "torch_dtype": "bfloat16",
}
PARAMS_135M = {True: 134_515_008, False: 162_826_560}


def test_135m_preset_is_the_public_config():
    c = get_config("smollm2-135m")
    assert c == SmolLM2Config()  # the defaults are the real model
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (576, 30, 9, 3)
    assert (c.intermediate_size, c.vocab_size, c.max_position_embeddings) == (1536, 49152, 8192)
    assert c.head_dim == 64 and c.rope_theta == 100000.0 and c.rms_norm_eps == 1e-5
    assert c.tie_word_embeddings and c.attn_impl == "sdpa"
    assert c.bos_token_id == c.eos_token_id == 0
    assert SmolLM2Config.from_hf(PUBLIC_CONFIG_JSON) == c


def test_tiny_preset_keeps_the_vocabulary():
    t = get_config("tiny")
    assert t.vocab_size == 49152 and t.num_hidden_layers < 30 and t.hidden_size < 576
    assert t.num_attention_heads % t.num_key_value_heads == 0 and t.num_attention_heads > t.num_key_value_heads
    assert set(PRESETS) >= {"smollm2-135m", "tiny"}


def test_overrides_and_unknown_preset():
    assert get_config("tiny", attn_impl="manual").attn_impl == "manual"
    assert not get_config("smollm2-135m", tie_word_embeddings=False).tie_word_embeddings
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*smollm2-135m"):
        get_config("huge")


@pytest.mark.parametrize("kwargs,message", [
    (dict(hidden_size=577), r"hidden_size \(577\) must be divisible by num_attention_heads \(9\)"),
    (dict(num_key_value_heads=2), r"num_attention_heads \(9\) must be a multiple of num_key_value_heads \(2\)"),
    (dict(hidden_size=9 * 63), r"head_dim \(63\) must be even"),
    (dict(num_hidden_layers=0), r"num_hidden_layers must be a positive integer, got 0"),
    (dict(vocab_size=-5), r"vocab_size must be a positive integer"),
    (dict(hidden_size=576.0), r"hidden_size must be a positive integer, got 576.0"),
    (dict(num_attention_heads=True), r"num_attention_heads must be a positive integer, got True"),
    (dict(rope_theta=0.0), r"rope_theta, rms_norm_eps and initializer_range must be positive"),
    (dict(rms_norm_eps=-1e-5), r"must be positive"),
    (dict(attention_dropout=1.0), r"attention_dropout must be in \[0, 1\)"),
    (dict(attn_impl="flash"), r"attn_impl must be 'sdpa' or 'manual', got 'flash'"),
    (dict(eos_token_id=49152), r"eos_token_id must lie in \[0, vocab_size\)"),
    (dict(bos_token_id=-1), r"bos_token_id must lie in \[0, vocab_size\)"),
])
def test_post_init_rejects_impossible_shapes(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        SmolLM2Config(**kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("patch,message", [
    (dict(model_type="gpt2"), "expected a llama config.json"),
    (dict(attention_bias=True), "attention_bias=true is not part"),
    (dict(mlp_bias=True), "mlp_bias=true is not part"),
    (dict(hidden_act="gelu"), "hidden_act must be 'silu'"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling is not supported"),
])
def test_from_hf_rejects_other_architectures(patch, message):
    with pytest.raises(ValueError, match=message):
        SmolLM2Config.from_hf({**PUBLIC_CONFIG_JSON, **patch})


@pytest.mark.parametrize("name", ["smollm2-135m", "tiny"])
@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_through_transformers_llama_config(name, tied, tmp_path):
    from transformers import LlamaConfig

    ours = get_config(name, tie_word_embeddings=tied)
    hf = LlamaConfig(**ours.to_hf())
    # transformers read every field as we meant it
    assert (hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers) == (
        ours.hidden_size, ours.intermediate_size, ours.num_hidden_layers)
    assert (hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim) == (
        ours.num_attention_heads, ours.num_key_value_heads, ours.head_dim)
    assert hf.rope_parameters["rope_theta"] == ours.rope_theta and hf.rope_parameters["rope_type"] == "default"
    assert hf.rms_norm_eps == ours.rms_norm_eps and hf.tie_word_embeddings == tied
    assert hf.hidden_act == "silu" and not hf.attention_bias and not hf.mlp_bias

    hf.save_pretrained(tmp_path)  # writes tmp_path/config.json in transformers' own format
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["model_type"] == "llama"
    for source in (tmp_path / "config.json", tmp_path, str(tmp_path), on_disk, hf.to_dict()):
        assert SmolLM2Config.from_hf(source) == ours, source


def test_to_dict_round_trip_and_architecture_dict():
    c = get_config("tiny", attn_impl="manual")
    d = c.to_dict()
    assert "head_dim" not in d and SmolLM2Config.from_dict(d) == c
    assert SmolLM2Config.from_dict({**d, "not_a_field": 1}) == c
    # the attention path does not change the weights, so it is not part of the architecture
    assert c.architecture_dict() == get_config("tiny").architecture_dict()
    assert "attn_impl" not in c.architecture_dict()


def test_from_hf_accepts_nested_rope_and_missing_kv_heads():
    d = {k: v for k, v in PUBLIC_CONFIG_JSON.items() if k not in ("rope_theta", "num_key_value_heads")}
    d["rope_parameters"] = {"rope_theta": 100000.0, "rope_type": "default"}
    c = SmolLM2Config.from_hf(d)
    assert c.rope_theta == 100000.0 and c.num_key_value_heads == c.num_attention_heads == 9


@pytest.mark.parametrize("tied", [True, False])
def test_param_counts_135m(tied):
    with torch.device("meta"):  # shapes only
        n = SmolLM2ForCausalLM(get_config("smollm2-135m", tie_word_embeddings=tied)).num_params()
    assert n == PARAMS_135M[tied]


@pytest.mark.parametrize("name", ["smollm2-135m", "tiny"])
@pytest.mark.parametrize("tied", [True, False])
def test_param_counts_equal_transformers(name, tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = get_config(name, tie_word_embeddings=tied)
    with torch.device("meta"):
        ours = SmolLM2ForCausalLM(config)
        hf = LlamaForCausalLM(LlamaConfig(**config.to_hf()))
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in hf.state_dict().items()}
