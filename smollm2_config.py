"""SmolLM2 architecture as one dataclass.

Field names are those of the public Hugging Face `config.json`
(https://huggingface.co/HuggingFaceTB/SmolLM2-135M/blob/main/config.json), so a config moves
between this repo and transformers' `LlamaConfig` without a translation table. Extra
fields, `attn_impl`, `residual_dtype` and the (already public) `tie_word_embeddings`, are the switches the
ablation sweep flips; their defaults are the real model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SmolLM2Config:
    # --- sizes ---
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536  # SwiGLU inner width
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3  # grouped-query attention: 3 query heads share one K/V head
    max_position_embeddings: int = 8192

    # --- numerics ---
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.041666666666666664  # = 1/24; std of every Linear/Embedding init
    attention_dropout: float = 0.0

    # --- tokens and weight sharing ---
    tie_word_embeddings: bool = True
    bos_token_id: int = 0
    eos_token_id: int = 0

    # --- implementation switches (not architecture; defaults are the fast, real path) ---
    attn_impl: str = "sdpa"  # "sdpa" (F.scaled_dot_product_attention, causal) or "manual" (explicit softmax)
    residual_dtype: str = "fp32"  # residual stream under autocast: "fp32" or "bf16" (the autocast dtype)

    # --- derived in __post_init__ ---
    head_dim: int = field(init=False)

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "max_position_embeddings")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SmolLM2Config.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention")
        self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0 or self.initializer_range <= 0:
            raise ValueError("rope_theta, rms_norm_eps and initializer_range must be positive")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.attn_impl not in ("sdpa", "manual"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'manual', got {self.attn_impl!r}")
        if self.residual_dtype not in ("fp32", "bf16"):
            raise ValueError(f"residual_dtype must be 'fp32' or 'bf16', got {self.residual_dtype!r}")
        for name in ("bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must lie in [0, vocab_size)")

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        """Every init field (what a checkpoint stores); head_dim is derived, so it is left out."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SmolLM2Config":
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in d.items() if k in names})

    def architecture_dict(self) -> dict[str, Any]:
        """The fields that decide the weights' shapes and meaning (used to refuse a mismatched checkpoint)."""
        d = self.to_dict()
        d.pop("attn_impl")  # either attention path computes the same function of the same weights
        d.pop("residual_dtype")  # so does either residual dtype, up to rounding
        return d

    @classmethod
    def from_hf(cls, source: str | os.PathLike | dict[str, Any], **overrides: Any) -> "SmolLM2Config":
        """Read a Hugging Face config.json (a path to the file, to a folder holding it, or a dict)."""
        if isinstance(source, dict):
            d = dict(source)
        else:
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        if d.get("model_type", "llama") != "llama":
            raise ValueError(f"expected a llama config.json, got model_type={d.get('model_type')!r}")
        for flag in ("attention_bias", "mlp_bias"):
            if d.get(flag):
                raise ValueError(f"{flag}=true is not part of the SmolLM2 architecture")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act must be 'silu', got {d.get('hidden_act')!r}")
        if d.get("rope_scaling") not in (None, {}):
            raise ValueError("rope_scaling is not supported (SmolLM2 uses plain RoPE)")
        params = d.get("rope_parameters") or {}
        if "rope_theta" not in d and "rope_theta" in params:  # transformers >= 5 nests it
            d["rope_theta"] = params["rope_theta"]
        if d.get("num_key_value_heads") is None:
            d["num_key_value_heads"] = d.get("num_attention_heads")
        d.update(overrides)
        return cls.from_dict(d)

    def to_hf(self) -> dict[str, Any]:
        """A config.json dict that transformers' LlamaConfig accepts and that builds this exact model."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "rms_norm_eps": self.rms_norm_eps,
            "initializer_range": self.initializer_range,
            "attention_bias": False,
            "attention_dropout": self.attention_dropout,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "use_cache": True,
            "torch_dtype": "float32",
        }


# Named presets. "smollm2-135m" mirrors HuggingFaceTB/SmolLM2-135M/config.json exactly.
# "tiny" keeps the vocabulary (so the real tokenizer works) and shrinks everything else for CPU tests.
PRESETS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {},
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
}


def get_config(name: str, **overrides: Any) -> SmolLM2Config:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return SmolLM2Config(**{**PRESETS[name], **overrides})
