"""The lm-eval model ``recurrent_lm``: a recurrent-depth LM evaluated at a chosen test-time depth.

Importing this module registers the model with lm-eval (``--model recurrent_lm``). All three request
types are implemented on top of :class:`lm_eval.api.model.TemplateLM`, which already splits
(context, continuation) pairs at the token level:

* ``loglikelihood``: one forward per batch of right-padded ``context + continuation[:-1]``; the
  continuation's log-probabilities are summed. Requests sharing ``context + continuation[:-1]`` are
  scored by one forward (lm-eval's ``Collator`` with ``group_by="contexts"``).
* ``loglikelihood_rolling``: the document is cut into disjoint windows of at most ``max_length``
  predicted tokens (lm-eval's ``get_rolling_token_windows`` / ``make_disjoint_window``), so every token
  is scored exactly once; one float per request.
* ``generate_until``: batched left-padded decoding with the recurrent KV cache, stopping at any
  ``until`` string, the end-of-sequence token or ``max_gen_toks``.

Every forward runs ``num_steps`` core iterations per token, or fewer with an exit criterion; the
iterations each real (non-padding) token received are accumulated, so :meth:`RecurrentLMEval.steps_summary`
reports the mean steps used per token that a depth sweep plots its metrics against.
"""

from __future__ import annotations

import logging
import os
import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from torch import Tensor, nn
from tqdm import tqdm

from recurrent_lm.evaluation.chat import parse_chat
from recurrent_lm.evaluation.errors import EvalError
from recurrent_lm.infer.depth_bound import check_depth
from recurrent_lm.evaluation.model_args import (MODEL_ARGS, load_tokenizer, parse_batch_size, parse_cache,
                                                parse_depth, parse_device, parse_dtype, parse_exit, parse_kv_window,
                                                resolve_model_dir)
from recurrent_lm.model import RecurrentDepthLM
from recurrent_lm.model.io import TOKENIZER_FILE

log = logging.getLogger(__name__)

MODEL_NAME = "recurrent_lm"
_kept: Optional[list["RecurrentLMEval"]] = None
"""Inside :func:`keep_models`, every model constructed (lm-eval's own CLI builds it out of reach)."""

@register_model(MODEL_NAME)
class RecurrentLMEval(TemplateLM):
    """lm-eval wrapper around :class:`RecurrentDepthLM`; see :data:`MODEL_ARGS` for the arguments.

    ``pretrained`` may also be an in-memory ``RecurrentDepthLM`` (then pass ``tokenizer`` as a
    TextTokenizer or a path), e.g. to evaluate inside a training loop.
    """

    backend = "causal"

    def __init__(
        self,
        pretrained: Union[str, os.PathLike, nn.Module, None] = None,
        num_steps: Any = None,
        exit: Optional[str] = None,  # noqa: A002 - the model arg is called `exit`
        threshold: Any = None,
        min_steps: Any = None,
        max_steps: Any = None,
        kv_cache: Any = "full",
        kv_window: Any = None,
        batch_size: Any = 1,
        max_batch_size: Optional[int] = None,
        dtype: str = "float32",
        device: Optional[str] = None,
        max_length: Optional[int] = None,
        max_gen_toks: int = 256,
        tokenizer: Any = None,
        seed: int = 0,
        chat_template: Any = None,
        system_prompt: Optional[str] = None,
        trust_remote_code: Any = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise EvalError(f"unknown model arg(s) {sorted(unknown)} for --model {MODEL_NAME}; valid args are "
                            f"{sorted(MODEL_ARGS)} (see docs/evaluation.md)")
        if pretrained is None or (isinstance(pretrained, str) and not pretrained.strip()):
            raise EvalError(f"--model {MODEL_NAME} needs pretrained=<exported model dir or run dir>")
        # Cheap checks first, so a typo fails before a large model is loaded; the depth needs the model's default.
        self.exit_spec = parse_exit(exit, threshold, min_steps, max_steps)
        self.kv_cache = parse_cache(kv_cache)
        self.kv_window = parse_kv_window(kv_window)
        self.batch_size = parse_batch_size(batch_size, max_batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self._warned_ignored: set[tuple[str, ...]] = set()  # generation kwargs already reported as ignored
        if self.max_gen_toks < 1:
            raise EvalError(f"max_gen_toks={max_gen_toks}: must be >= 1")
        self.seed = int(seed)
        self._device = parse_device(device)
        self._dtype = parse_dtype(dtype, self._device)

        if isinstance(pretrained, nn.Module):
            self.model_dir: Optional[Path] = None
            model = pretrained
            if tokenizer is None:
                raise EvalError("pretrained=<model object> also needs tokenizer=<TextTokenizer or tokenizer.json path>")
        else:
            self.model_dir = resolve_model_dir(pretrained)
            model = RecurrentDepthLM.from_pretrained(self.model_dir, map_location=str(self._device))
        if isinstance(tokenizer, (str, os.PathLike)):
            self.tokenizer = load_tokenizer(Path(tokenizer).expanduser())
        elif tokenizer is not None:
            self.tokenizer = tokenizer
        else:
            self.tokenizer = load_tokenizer(self.model_dir / TOKENIZER_FILE)
        # In place for an in-memory model: it is moved to device/dtype and put in eval mode.
        self.model: RecurrentDepthLM = model.to(device=self._device, dtype=self._dtype).eval()
        config = self.model.config
        if self.tokenizer.vocab_size > config.vocab_size:
            raise EvalError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                            f"{config.vocab_size} embeddings; pass the tokenizer the model was trained with")
        self.max_length = config.block_size if max_length in (None, "", "none") else int(max_length)
        if not 2 <= self.max_length <= config.block_size:
            raise EvalError(f"max_length={max_length}: must be in [2, block_size={config.block_size}]")
        self.set_num_steps(num_steps)
        specials = {"bos_token": self.tok_decode([self.tokenizer.bos_id]) if self.tokenizer.bos_id is not None else "",
                    "eos_token": self.tok_decode([self.tokenizer.eos_id])}
        self.chat = parse_chat(chat_template, system_prompt, self.model_dir, specials)
        self._init_states = self.model.initial_state_table(self.seed)  # per position: batching-independent
        self.reset_steps()
        if _kept is not None:
            _kept.append(self)
        self._request_type = "loglikelihood"

    # ------------------------------------------------------------------ lm-eval plumbing
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        # Packed training data separates documents by the end-of-sequence token, so a document start is
        # conditioned on it: the same token conditions an empty context or the first rolling window.
        return self.tokenizer.eos_id

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "fingerprint", "recurrent_lm")

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: Union[int, list[int]], **kwargs: Any) -> str:
        return self.tokenizer.decode([tokens] if isinstance(tokens, int) else list(tokens))

    def prompt_text(self, context: str) -> str:
        """The text the model reads for ``context``: the context itself, or it rendered as a chat turn."""
        return self.chat.render(context) if self.chat else context

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return super()._encode_pair(self.prompt_text(context), continuation)

    def get_model_info(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir) if self.model_dir else None, **self.settings()}

    def settings(self) -> dict[str, Any]:
        """The evaluation settings that change results: what a sweep records next to its metrics."""
        return {"num_steps": self.num_steps, **self.exit_spec.settings(), "kv_cache": self.kv_cache,
                "seed": self.seed, "chat_template": bool(self.chat), "max_length": self.max_length,
                "dtype": str(self._dtype).removeprefix("torch.")}

    def set_num_steps(self, num_steps: Any) -> int:
        """Set (and return) the test-time depth: the cap of core iterations for the request ``num_steps``.
        A sweep calls it once per depth on one loaded model."""
        depth = parse_depth(num_steps, self.model.config.mean_recurrence, self.exit_spec)
        try:
            check_depth("max_steps" if self.exit_spec.max_steps is not None else "num_steps", depth, self.model.config,
                        self.max_length, self.batch_size if isinstance(self.batch_size, int) else 1, self.kv_cache,
                        self.kv_window, self._dtype)
        except ValueError as err:
            raise EvalError(str(err)) from None
        self.num_steps = depth
        return self.num_steps

    # ------------------------------------------------------------------ steps accounting
    def reset_steps(self) -> None:
        self._steps: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # request type -> [steps sum, tokens]

    def steps_summary(self) -> dict[str, Any]:
        """Mean core iterations per real token across every forward since :meth:`reset_steps`.

        Counts all non-padding tokens the model processed (contexts included), overall and per request type.
        Without an exit criterion the mean equals ``num_steps``.
        """
        total_steps = sum(s for s, _ in self._steps.values())
        total_tokens = sum(n for _, n in self._steps.values())
        return {
            "mean_steps_used": total_steps / total_tokens if total_tokens else None,
            "tokens": total_tokens,
            "by_request_type": {kind: {"mean_steps_used": s / n if n else None, "tokens": n}
                                for kind, (s, n) in sorted(self._steps.items())},
        }

    def _forward(self, input_ids: Tensor, valid: Tensor, **kwargs: Any) -> Tensor:
        """Logits (B, T, V) at the configured depth; ``valid`` (B, T) marks the real tokens to account."""
        criterion = self.exit_spec.build(watch=valid)
        if self._init_states is not None:  # positions 0..T-1: inputs here are right-padded, never cached
            kwargs["init_state"] = self._init_states[: input_ids.shape[1]].expand(input_ids.shape[0], -1, -1)
        out = self.model(input_ids, num_steps=self.num_steps, exit_criterion=criterion, **kwargs)
        record = self._steps[self._request_type]
        record[0] += int(out.steps_used[valid].sum())
        record[1] += int(valid.sum())
        return out.logits

    # ------------------------------------------------------------------ loglikelihood
    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False, override_bs: Optional[int] = None,
                              ) -> list[tuple[float, bool]]:
        """Score ``(request key, context tokens, continuation tokens)`` triples: (sum log p, greedy?)."""
        for _, _, continuation in requests:
            if len(continuation) > self.max_length:
                raise EvalError(f"a continuation of {len(continuation)} tokens exceeds max_length={self.max_length};"
                                " it cannot be scored in one window")

        def sort_key(req):  # longest first: the first batch is the largest, OOM shows at once
            tokens = req[1] + req[2]
            return -len(tokens), tuple(tokens)

        collator = Collator(requests, sort_fn=sort_key, group_by="contexts", group_fn=lambda r: r[1] + r[2][:-1])
        results: list[tuple[float, bool]] = []
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="recurrent_lm loglikelihood")
        pad = self.tokenizer.pad_id
        for chunk in collator.get_batched(n=override_bs or self.batch_size):
            inputs = [(ctx + cont)[-(self.max_length + 1):][:-1] for _, ctx, cont in chunk]
            width = max(len(x) for x in inputs)
            ids = torch.full((len(inputs), width), pad, dtype=torch.long)
            valid = torch.zeros((len(inputs), width), dtype=torch.bool)
            for i, x in enumerate(inputs):
                ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
                valid[i, : len(x)] = True
            # Right padding needs no mask: attention is causal, so no real token sees a pad.
            logprobs = F.log_softmax(self._forward(ids.to(self.device), valid.to(self.device)).float(), dim=-1)
            for (key, ctx, cont), x, lp in zip(chunk, inputs, logprobs):
                span = lp[len(x) - len(cont): len(x)].unsqueeze(0)  # (1, |cont|, V): the continuation's predictions
                for key_i, cont_i, lp_i in collator.get_cache(req_str=key, cxt_toks=ctx, cont_toks=cont, logits=span):
                    answer = self._score(cont_i, lp_i)
                    results.append(answer)
                    if key_i is not None:
                        self.cache_hook.add_partial("loglikelihood", key_i, answer)
                    pbar.update(1)
        pbar.close()
        return collator.get_original(results)

    def _score(self, continuation: list[int], logprobs: Tensor) -> tuple[float, bool]:
        if not continuation:
            return 0.0, True
        lp = logprobs[0, -len(continuation):]  # (|cont|, V); trailing slice serves grouped shorter continuations
        target = torch.tensor(continuation, dtype=torch.long, device=lp.device)
        total = lp.gather(-1, target[:, None]).sum()
        return float(total), bool((lp.argmax(-1) == target).all())

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._request_type = "loglikelihood"
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def rolling_windows(self, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
        """Disjoint (context, continuation) windows that together predict each of ``tokens`` exactly once."""
        return [lm_utils.make_disjoint_window(window) for window in lm_utils.get_rolling_token_windows(
            token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each request's whole text, one float per request."""
        self._request_type = "loglikelihood_rolling"
        windows: list[tuple[None, list[int], list[int]]] = []
        owner: list[int] = []
        for index, (text,) in enumerate(req.args for req in requests):
            for context, continuation in self.rolling_windows(self.tok_encode(text)):
                windows.append((None, context, continuation))
                owner.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm) if windows else []
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, scores):
            totals[index] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode each context until one of its ``until`` strings, end-of-sequence or ``max_gen_toks``.

        Batches go through :func:`recurrent_lm.infer.generate` (left padding, KV cache across the
        recurrence, per-token exit), with the same depth settings as the loglikelihood requests.
        """
        self._request_type = "generate_until"
        args = [req.args for req in requests]
        collator = Collator(args, sort_fn=lambda a: (-len(self.tok_encode(self.prompt_text(a[0]))), a[0]),
                            group_by="gen_kwargs", group_fn=lambda a: a[1])
        eos_text = self.tok_decode([self.eot_token_id])
        results: list[str] = []
        pbar = tqdm(total=len(args), disable=disable_tqdm or self.rank != 0, desc="recurrent_lm generate_until")
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            config, until = self._generation_config(dict(all_kwargs[0]), eos_text)
            room = self.max_length - config.max_new_tokens
            prompts = [(self.tok_encode(self.prompt_text(c)) or [self.prefix_token_id])[-room:] for c in contexts]
            texts = self._generate(prompts, config)
            for context, text in zip(contexts, texts):
                text = postprocess_generated_text(text, until, None)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, all_kwargs[0]), text)
                pbar.update(1)
        pbar.close()
        return collator.get_original(results)

    def _generation_config(self, gen_kwargs: dict[str, Any], eos_text: str):
        """lm-eval generation kwargs -> (GenerationConfig, stop strings)."""
        from recurrent_lm.infer import GenerationConfig

        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
        budget = int(kwargs.pop("max_gen_toks"))
        if budget >= self.max_length:
            log.warning("max_gen_toks=%d does not fit the %d-token context; generating at most %d tokens",
                        budget, self.max_length, self.max_length - 1)
            budget = self.max_length - 1
        sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)  # as in transformers: unused unless sampling
        temperature = temperature if sample else 0.0
        top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
        ignored = tuple(sorted(k for k in kwargs if k not in ("max_length",)))
        if ignored and ignored not in self._warned_ignored:  # once per run, not once per batch
            self._warned_ignored.add(ignored)
            log.warning("recurrent_lm ignores the generation kwargs %s", list(ignored))
        try:
            config = GenerationConfig(
                max_new_tokens=budget, num_steps=self.num_steps, exit=self.exit_spec, kv_cache=self.kv_cache,
                kv_window=self.kv_window, temperature=temperature, top_k=int(top_k) if top_k else None,
                top_p=float(top_p) if top_p is not None else None, stop=tuple(s for s in until if s),
                seed=self.seed)
        except ValueError as err:
            raise EvalError(f"generation settings {gen_kwargs}: {err}") from None
        return config, until

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]], config) -> list[str]:
        """Texts generated for token-id prompts (cut before a stop string); accounts the steps used."""
        from recurrent_lm.infer import generate

        result = generate(self.model, prompts, config, eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                          decode=self.tok_decode)
        record = self._steps[self._request_type]
        for prompt_steps, steps in zip(result.prompt_steps, result.steps):
            # Tokens fed to the model: the prompt (prefill), then every generated token but the last.
            # steps[k] belongs to the forward that fed generated token k-1 (k = 0: the prefill).
            record[0] += sum(prompt_steps) + sum(steps[1:])
            record[1] += len(prompt_steps) + len(steps) - 1
        return list(result.texts)


@contextlib.contextmanager
def keep_models() -> Iterator[list["RecurrentLMEval"]]:
    """Collect the models constructed inside the block, so ``recurrent-lm-eval run`` can record their settings and
    step counts in the results file (lm-eval records only the model-args string it was given). Outside the block
    nothing is kept alive."""
    global _kept
    _kept = []
    try:
        yield _kept
    finally:
        _kept = None
