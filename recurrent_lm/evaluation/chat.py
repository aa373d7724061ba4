"""Chat formatting of lm-eval contexts: the model args ``chat_template`` and ``system_prompt``.

Huginn-0125's GSM8k numbers were measured with its chat template and a system prompt. Each context becomes
``[system?, user: context]`` rendered by the tokenizer's Jinja template with the generation prompt appended,
as Hugging Face's ``apply_chat_template`` does (sandboxed Jinja, trim_blocks, lstrip_blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from recurrent_lm.evaluation.errors import EvalError
from recurrent_lm.data.tokenizer_dir import read_chat_template

OFF = (None, False, "", "false", "False", "0", "no", "none")
ON = (True, "true", "True", "1", "yes")


@dataclass(frozen=True)
class ChatFormat:
    template: str
    """Jinja source; sees ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``."""
    system_prompt: Optional[str] = None
    tokens: dict[str, str] = field(default_factory=dict)
    """bos_token / eos_token strings the template may print."""

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            object.__setattr__(self, "_compiled", env.from_string(self.template))
        except TemplateError as err:
            raise EvalError(f"chat_template does not parse as Jinja ({err}); fix the template") from None

    def render(self, context: str) -> str:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": context})
        try:
            return self._compiled.render(messages=messages, add_generation_prompt=True, **self.tokens)
        except TemplateError as err:
            raise EvalError(f"chat_template failed to render a context ({err})") from None


def parse_chat(chat_template: Any, system_prompt: Optional[str], model_dir: Optional[Path],
               tokens: dict[str, str]) -> Optional[ChatFormat]:
    """``chat_template``: off (default), on (the model directory's template) or a path to a Jinja file."""
    if chat_template in OFF:
        if system_prompt:
            raise EvalError("system_prompt needs chat_template=true (or a template path): without a template "
                            "there is no system turn to put it in")
        return None
    if chat_template in ON:
        template = read_chat_template(model_dir) if model_dir is not None else None
        if template is None:
            raise EvalError(f"chat_template=true but {model_dir or 'the in-memory model'} has no chat template "
                            "(tokenizer_config.json 'chat_template' or chat_template.jinja); pass "
                            "chat_template=<path to a .jinja file>")
    else:
        path = Path(str(chat_template)).expanduser()
        if not path.is_file():
            raise EvalError(f"chat_template={chat_template!r}: use true, false or the path of a Jinja template file")
        template = path.read_text()
    return ChatFormat(template, system_prompt or None, tokens)


def _raise(message: str) -> None:
    raise TemplateError(message)
