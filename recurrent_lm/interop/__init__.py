"""Other checkpoint formats in and out of recurrent_lm (``recurrent-lm-convert``).

* :mod:`huginn` — the Huginn-0125 format (config keys, tensor names, the RoPE pairing permutation);
* :mod:`huginn_io` — streamed directory import/export of that format;
* :mod:`tokenizer` — Hugging Face tokenizer directories (named special tokens, chat templates).
"""

from recurrent_lm.interop.huginn import FormatError, config_from_huginn, config_to_huginn
from recurrent_lm.interop.huginn_io import export_huginn, import_huginn, load_huginn, save_huginn
from recurrent_lm.interop.tokenizer import HFTokenizer, load_tokenizer, read_chat_template

__all__ = ["FormatError", "HFTokenizer", "config_from_huginn", "config_to_huginn", "export_huginn", "import_huginn",
           "load_huginn", "load_tokenizer", "read_chat_template", "save_huginn"]
