"""Hugging Face ``transformers`` interop: import causal language models into blockdsl and
export blockdsl models as Hugging Face checkpoints.

>>> from blockdsl import hf
>>> model = hf.from_hf(hf_model)              # a transformers model object
>>> config = hf.to_config(hf_model.config)    # the blockdsl dict config alone
>>> model = hf.from_pretrained_dir("ckpt/")   # config.json + *.safetensors
>>> hf.export_hf(model, "out/")               # config.json + model.safetensors

Modules: ``base`` (``Architecture``, ``WeightMapper``, the registry and the helpers the
families share), one module per family of architectures, each importing only ``base`` and
registering its records when imported: ``classic`` (GPT-2, GPT-NeoX, GPT-J, OPT, BLOOM, MPT,
Falcon, Phi, GPT-BigCode, CodeGen, GPT-Neo, GPT-1, BioGPT), ``dense`` (Llama, Mistral,
Gemma 2, Qwen2/3, Gemma, Gemma 3, OLMo, OLMo 2, Cohere, StableLM, Phi-3, Granite, StarCoder2,
Persimmon, Nemotron, and the Llama relatives: InternLM3, IQuestCoder, EXAONE, EXAONE 4,
Ministral, CWM, SmolLM3, Helium, Seed-OSS, Arcee, ERNIE 4.5, HyperCLOVA X, OLMo 3, GLM,
GLM-4, Cohere 2, Jais 2, VaultGemma, Apertus), ``moe`` (Mixtral,
Qwen2-MoE, OLMoE, DBRX, DeepSeek-V2/V3), ``interior`` (attention with slot contents:
gpt-oss, HunYuan dense and MoE, nanochat, Ministral 3, Flint, HY v3), ``hybrid`` (LFM2,
Qwen3-Next) and ``ssm`` (Mamba, Mamba2, RecurrentGemma, Jamba, Bamba, Falcon-H1:
docs/hybrids.md);
``importer`` (the import's entry points) and ``exporter`` (the import run backwards).
Adding an architecture is adding one ``Architecture`` record with ``register_architecture``;
it then imports and exports.

``transformers`` is an optional dependency (``pip install 'blockdsl[hf]'``): neither
``import blockdsl`` nor ``import blockdsl.hf`` imports it; a function that needs it raises
``HFImportError`` saying how to install it.
"""

# The registry is filled here, in this order (the export breaks ties between architectures
# that build the same model in favour of the first registered: GPT-2 before GPT-BigCode, Llama
# before Mistral and Granite, Mixtral before the other MoEs). Family modules never import this
# package's __init__ or each other, so there is no import-time circle.
from blockdsl.hf import classic, dense, hybrid, interior, moe, ssm  # noqa: F401  (registers them)
from blockdsl.hf.base import (
    ARCHITECTURES,
    SUPPORTED,
    Architecture,
    HFImportError,
    WeightMapper,
    register_architecture,
)
from blockdsl.hf.checks import eos_ids
from blockdsl.hf.exporter import HFExportError, export_hf, hf_config_for, hf_state_dict
from blockdsl.hf.importer import (
    config_from_dir,
    convert_weights,
    from_hf,
    from_pretrained_dir,
    load_generator,
    load_weights,
    to_config,
)

__all__ = [
    "ARCHITECTURES",
    "SUPPORTED",
    "Architecture",
    "HFExportError",
    "HFImportError",
    "WeightMapper",
    "config_from_dir",
    "convert_weights",
    "eos_ids",
    "export_hf",
    "from_hf",
    "from_pretrained_dir",
    "hf_config_for",
    "hf_state_dict",
    "load_generator",
    "load_weights",
    "register_architecture",
    "to_config",
]
