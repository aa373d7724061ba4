"""Other checkpoint formats in and out of recurrent_lm (``recurrent-lm-convert``).

* :mod:`huginn` — the Huginn-0125 format (config keys, tensor names, the RoPE pairing permutation);
* :mod:`huginn_io` — streamed directory import/export of that format;
* :mod:`hf_llama` — Hugging Face ``LlamaForCausalLM`` (config keys, tensor names, layer slices for a retrofit);
* :mod:`hf_llama_io` — streamed directory (or Hub) import and export of that format;
* :mod:`coconut_ref` / :mod:`coconut_ref_io` — the reference Coconut implementation's ``run.py`` checkpoints;
* :mod:`adapter` — the one converter protocol (:class:`StateDictAdapter`) every format implements;
* :mod:`stream` — safetensors read tensor by tensor; :mod:`errors` — :class:`FormatError`.

Tokenizer directories in the Hugging Face layout (named special tokens, chat templates) are
:mod:`recurrent_lm.data.tokenizer_dir`: training packs data with them too.
"""

from recurrent_lm.interop.adapter import StateDictAdapter
from recurrent_lm.interop.coconut_ref import CoconutRefAdapter
from recurrent_lm.interop.errors import FormatError
from recurrent_lm.interop.hf_llama import LayerSlices, LlamaAdapter, config_from_llama, config_to_llama, retrofit_adapter
from recurrent_lm.interop.hf_llama_io import export_hf_llama, import_hf_llama, load_hf_llama, save_hf_llama
from recurrent_lm.interop.huginn import HuginnAdapter, config_from_huginn, config_to_huginn
from recurrent_lm.interop.huginn_io import export_huginn, import_huginn, load_huginn, save_huginn

__all__ = ["CoconutRefAdapter", "FormatError", "HuginnAdapter", "LayerSlices", "LlamaAdapter", "StateDictAdapter", "config_from_huginn", "config_from_llama", "config_to_huginn",
           "config_to_llama", "export_hf_llama", "export_huginn", "import_hf_llama", "import_huginn", "load_hf_llama",
           "load_huginn", "retrofit_adapter", "save_hf_llama", "save_huginn"]
