"""``blockdsl.hf``: the Hugging Face importer, kept importable under its old name. It lives in
``blockdsl.interop.hf``."""

from blockdsl.interop.hf import (  # noqa: F401
    ARCHITECTURES,
    SUPPORTED,
    Architecture,
    HFImportError,
    WeightMapper,
    __all__,
    config_from_dir,
    convert_weights,
    from_hf,
    from_pretrained_dir,
    load_weights,
    register_architecture,
    to_config,
)
