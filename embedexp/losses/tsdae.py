"""TSDAE: Transformer-based Sequential Denoising Auto-Encoder.

Inputs: embeddings ``(damaged,)``: one ``(B, d)`` tensor, the encoder's sentence embeddings of the
damaged sentences (a list/tuple whose first element is used, or a dict; a dict's ``"damaged"`` key
is used if present, else its first value), and ``target_features``: the tokenizer output of the
ORIGINAL sentences (``input_ids``, ``attention_mask``, ...) from ``Encoder.tokenize``. Labels are not
used. The damaged text comes from ``embedexp.data.noise.delete_words(original, deletion_ratio)``.

Model: a transformer decoder (``AutoModelForCausalLM`` with ``is_decoder=True`` and
``add_cross_attention=True``) reconstructs the original tokens, cross-attending only to the sentence
embedding ``e_i`` (``encoder_hidden_states`` of shape ``(B, 1, d)``). Teacher forcing: with the
original tokens ``x_i = (x_i1, ..., x_iT)`` and ``N`` the number of non-padding targets in the batch,

    L = 1/N * sum_i sum_{t=1}^{T-1} [x_i,t+1 is not padding] * -log p_dec(x_i,t+1 | x_i1..x_it, e_i)

i.e. token-level cross-entropy of the next-token predictions, averaged over non-padding target
tokens (the first token, [CLS]/<s>, is never predicted).

With a single memory slot the cross-attention softmax is exactly 1, so each cross-attention block
reduces to ``out_proj(W_v e + b_v)`` added to every position: its query/key weights get zero gradient
(up to rounding; AdamW weight decay only shrinks them). This is inherent to TSDAE, not a bug.

By default the decoder is initialised from the encoder's own checkpoint and TIED to it: every decoder
parameter whose name and shape match an encoder parameter (embeddings, self-attention, feed-forward,
layer norms) *is* the encoder's ``nn.Parameter`` object; only the cross-attention layers and the LM
head's transform (plus the LM-head output matrix when the config does not tie it to the input
embeddings) are new decoder-only parameters. Gradients from the reconstruction therefore train the
encoder through both paths (sentence embedding and shared decoder weights), as in the paper and in
sentence-transformers' ``DenoisingAutoEncoderLoss(tie_encoder_decoder=True)``.

Tying in transformers 5.x: ``PreTrainedModel._tie_encoder_decoder_weights`` no longer exists, so the
parameters are tied by hand (``setattr(decoder_submodule, "weight", encoder_param)``), and then
``decoder.tie_weights()`` re-ties the LM head's output matrix to the (now shared) input embeddings.
sentence-transformers ties the other way round (encoder params replaced by the decoder's); here the
encoder keeps its own parameter objects and values, so ``Encoder.save``/``fingerprint`` are unaffected.

Optimizer: the decoder is a registered submodule (``self.decoder``), so a LightningModule that holds
both the encoder and this loss sees its parameters. ``nn.Module.parameters()`` / ``named_parameters()``
deduplicate shared tensors by identity, so collecting ``lightning_module.named_parameters()`` gives
each shared tensor once. A caller that assembles parameter lists by hand must use
``list(encoder.parameters()) + loss.extra_parameters()`` (``extra_named_parameters()`` for
decay/no-decay grouping by name): these are the decoder parameters NOT shared with the encoder.

Pooling: the paper recommends CLS pooling; the encoder's pooling (and normalisation) is the user's
choice and is not enforced. sentence-transformers' TSDAE example uses no L2 normalisation.

Padding: right padding is expected (as BERT-style tokenizers do); a target is ignored when it or the
token before it is padding, so left padding does not produce spurious targets either.

Reference: Wang, Reimers, Gurevych 2021, "TSDAE: Using Transformer-based Sequential Denoising
Auto-Encoder for Unsupervised Sentence Embedding Learning", Findings of EMNLP, arXiv:2104.06979.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.data.noise import check_ratio, delete_words
from embedexp.errors import ConfigError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class TSDAELoss(nn.Module):
    columns = ("damaged", "original")
    needs_tokens = True  # forward needs the tokenised "original" column as target_features

    def __init__(
        self,
        decoder_name_or_path: str | None = None,
        tie_encoder_decoder: bool = True,
        deletion_ratio: float = 0.6,
    ) -> None:
        super().__init__()
        if decoder_name_or_path is not None and not (
            isinstance(decoder_name_or_path, str) and decoder_name_or_path.strip()
        ):
            raise ConfigError(
                f"loss.decoder_name_or_path={decoder_name_or_path!r}; expected a model folder or hub name, "
                "or null to use the encoder's own checkpoint"
            )
        if (
            isinstance(decoder_name_or_path, str)
            and decoder_name_or_path.startswith((".", "/", "~"))
            and not Path(decoder_name_or_path).expanduser().is_dir()
        ):
            raise ConfigError(
                f"loss.decoder_name_or_path={decoder_name_or_path}: folder does not exist; "
                "expected a model folder or null"
            )
        if not isinstance(tie_encoder_decoder, bool):
            raise ConfigError(f"loss.tie_encoder_decoder={tie_encoder_decoder!r}; expected true or false")
        try:
            self.deletion_ratio = check_ratio(deletion_ratio, key="loss.deletion_ratio")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.decoder_name_or_path = decoder_name_or_path
        self.tie_encoder_decoder = tie_encoder_decoder
        self.register_module("decoder", None)  # built by attach()
        self.tied_names: list[str] = []  # decoder parameter names that are the encoder's tensors
        self._encoder_param_ids: frozenset[int] = frozenset()
        self._encoder_tokenizer = None
        self._decoder_tokenizer = None
        self._retokenize = False
        self._max_length: int | None = None

    # ---------------------------------------------------------------- data
    def damage(self, text: str, rng: random.Random | None = None) -> str:
        """The damaged version of ``text`` (word deletion with this loss's ``deletion_ratio``)."""
        return delete_words(text, self.deletion_ratio, rng)

    # ---------------------------------------------------------------- decoder construction
    def attach(self, encoder) -> "TSDAELoss":
        """Build the decoder for ``encoder`` (an ``embedexp.models.Encoder``) and tie it if configured.

        The decoder comes from ``decoder_name_or_path`` or, when that is None, from the encoder's own
        folder ``encoder.model_name_or_path``. It is moved to the encoder's device and dtype.
        Returns self.
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        backbone = encoder.backbone
        source = self.decoder_name_or_path or encoder.model_name_or_path
        key = (
            f"loss.decoder_name_or_path={self.decoder_name_or_path!r}"
            if self.decoder_name_or_path
            else f"loss.decoder_name_or_path=None (the encoder's checkpoint {source!r})"
        )
        kwargs = {"trust_remote_code": bool(getattr(encoder, "trust_remote_code", False))}
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
            config.is_decoder = True
            config.add_cross_attention = True
            with _held_back_load_report():
                decoder, info = AutoModelForCausalLM.from_pretrained(
                    source, config=config, output_loading_info=True, **kwargs
                )
            _report_decoder_load(source, info)
            decoder_tokenizer = (
                encoder.tokenizer
                if source == encoder.model_name_or_path
                else AutoTokenizer.from_pretrained(source, **kwargs)
            )
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            text = str(e).strip()
            first = text.splitlines()[0] if text else type(e).__name__
            raise ConfigError(f"{key}: cannot build a causal-LM decoder with cross-attention: {first}") from e

        if "encoder_hidden_states" not in inspect.signature(type(decoder).forward).parameters or not getattr(
            decoder.config, "add_cross_attention", False
        ):
            raise ConfigError(
                f"{key}: {type(decoder).__name__} has no cross-attention (no encoder_hidden_states input); "
                "TSDAE needs an encoder-style architecture usable as a decoder (BERT, RoBERTa, ...)"
            )
        dec_hidden = int(decoder.config.hidden_size)
        if dec_hidden != encoder.dim:
            raise ConfigError(
                f"{key}: decoder hidden size {dec_hidden} != encoder embedding size {encoder.dim}; "
                "the decoder cross-attends to the sentence embedding, so they must match"
            )

        enc_params = dict(backbone.named_parameters())
        ref = next(iter(enc_params.values()))
        decoder.to(ref.device)
        if ref.is_floating_point():
            decoder.to(ref.dtype)

        self._encoder_tokenizer = encoder.tokenizer
        self._decoder_tokenizer = decoder_tokenizer
        self._retokenize = decoder_tokenizer is not encoder.tokenizer and (
            decoder_tokenizer.get_vocab() != encoder.tokenizer.get_vocab()
        )
        self._max_length = getattr(encoder, "max_seq_length", None)
        if self._retokenize and decoder_tokenizer.pad_token is None:  # GPT-2 style tokenizers
            decoder_tokenizer.pad_token = decoder_tokenizer.eos_token

        tied: list[str] = []
        if self.tie_encoder_decoder:
            tied = self._tie(decoder, backbone, key)
        self.decoder = decoder.train()  # from_pretrained returns eval mode
        self.tied_names = tied
        self._encoder_param_ids = frozenset(id(p) for p in backbone.parameters())
        logger.info(
            "TSDAE decoder %s from %s: %d tensors shared with the encoder, %d decoder-only",
            type(decoder).__name__,
            source,
            len(tied),
            len(self.extra_parameters()),
        )
        return self

    def _tie(self, decoder: nn.Module, backbone: nn.Module, key: str) -> list[str]:
        """Make each decoder body parameter with an encoder counterpart (same name) that encoder tensor."""
        enc_type = getattr(backbone.config, "model_type", type(backbone).__name__)
        dec_type = getattr(decoder.config, "model_type", type(decoder).__name__)
        fix = "set loss.tie_encoder_decoder=false, or loss.decoder_name_or_path=null to use the encoder's checkpoint"
        if enc_type != dec_type:
            raise ConfigError(
                f"loss.tie_encoder_decoder=true needs a decoder of the encoder's architecture; {key} is "
                f"{dec_type!r} but the encoder is {enc_type!r} ({fix})"
            )
        if self._retokenize:
            raise ConfigError(
                f"loss.tie_encoder_decoder=true needs the encoder's tokenizer; {key} has a different vocabulary ({fix})"
            )
        body = decoder.base_model
        if body is decoder:
            raise ConfigError(f"{key}: cannot find the body of {type(decoder).__name__} to tie to the encoder ({fix})")
        enc_params = dict(backbone.named_parameters())
        tied = []
        for name, param in list(body.named_parameters()):
            shared = enc_params.get(name)
            if shared is None:  # decoder-only, e.g. cross-attention
                continue
            if shared.shape != param.shape:
                raise ConfigError(
                    f"loss.tie_encoder_decoder=true: decoder parameter {name} has shape {tuple(param.shape)} but the "
                    f"encoder's has {tuple(shared.shape)}; {key} is not the encoder's architecture ({fix})"
                )
            module_name, _, attr = name.rpartition(".")
            setattr(body.get_submodule(module_name), attr, shared)
            tied.append(f"{decoder.base_model_prefix}.{name}")
        if not tied:
            raise ConfigError(
                f"loss.tie_encoder_decoder=true: no decoder parameter matches an encoder parameter ({fix})"
            )
        # The LM head's output matrix pointed at the decoder's old input embeddings; re-tie it to the
        # shared ones (a no-op when the config does not tie word embeddings).
        decoder.tie_weights()
        return tied

    # ---------------------------------------------------------------- parameters
    def extra_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the decoder parameters NOT shared with the encoder (names start with "decoder.")."""
        if self.decoder is None:
            return
        for name, p in self.decoder.named_parameters():  # deduplicated by identity
            if id(p) not in self._encoder_param_ids:
                yield f"decoder.{name}", p

    def extra_parameters(self) -> list[nn.Parameter]:
        """Decoder parameters NOT shared with the encoder: optimise ``encoder.parameters()`` plus these."""
        return [p for _, p in self.extra_named_parameters()]

    # ---------------------------------------------------------------- loss
    def forward(
        self,
        embeddings: Sequence[torch.Tensor] | dict,
        labels: torch.Tensor | None = None,
        target_features: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if target_features is None:
            raise ValueError(
                "TSDAELoss needs target_features: the tokenised ORIGINAL sentences (input_ids, attention_mask); "
                "losses with needs_tokens=True must be called with them"
            )
        if self.decoder is None:
            raise RuntimeError("TSDAELoss.attach(encoder) must be called before the loss is used")
        sentence = self._sentence_embeddings(embeddings)
        if not isinstance(target_features, dict) or "input_ids" not in target_features:
            raise ValueError(
                "target_features must be a dict with input_ids (and attention_mask), as Encoder.tokenize returns"
            )
        input_ids, mask = self._targets(target_features, sentence.device)
        if input_ids.shape[0] != sentence.shape[0]:
            raise ValueError(
                f"TSDAE: {sentence.shape[0]} damaged embeddings but {input_ids.shape[0]} original sentences"
            )
        if input_ids.shape[1] < 2:
            raise ValueError("TSDAE: the original sentences tokenise to fewer than 2 tokens; nothing to reconstruct")

        decoder_ids = input_ids[:, :-1]
        decoder_mask = mask[:, :-1]
        targets = input_ids[:, 1:].masked_fill((mask[:, 1:] == 0) | (decoder_mask == 0), IGNORE_INDEX)
        dtype = next(self.decoder.parameters()).dtype
        memory = sentence[:, None, :].to(dtype)  # (B, 1, d): the decoder sees only the sentence embedding
        out = self.decoder(
            input_ids=decoder_ids,
            attention_mask=decoder_mask,
            encoder_hidden_states=memory,
            encoder_attention_mask=torch.ones(memory.shape[:2], dtype=decoder_mask.dtype, device=memory.device),
            use_cache=False,
            return_dict=True,
        )
        logits = out.logits
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )

    @staticmethod
    def _sentence_embeddings(embeddings) -> torch.Tensor:
        if isinstance(embeddings, torch.Tensor):
            cols = [embeddings]
        elif isinstance(embeddings, dict):
            cols = [embeddings["damaged"]] if "damaged" in embeddings else list(embeddings.values())
        else:
            cols = list(embeddings)
        if not cols:
            raise ValueError("TSDAE needs the damaged sentence embeddings; got no column")
        sentence = cols[0]
        if sentence.dim() != 2:
            raise ValueError(
                f"TSDAE: damaged sentence embeddings must be (batch, dim); got shape {tuple(sentence.shape)}"
            )
        return sentence

    def _targets(self, features: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = features["input_ids"]
        mask = features.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        if self._retokenize:  # a decoder with another vocabulary: decode, then tokenise for the decoder
            texts = self._encoder_tokenizer.batch_decode(
                input_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True
            )
            enc = self._decoder_tokenizer(
                texts, padding=True, truncation=True, max_length=self._max_length, return_tensors="pt"
            )
            input_ids, mask = enc["input_ids"], enc["attention_mask"]
        return input_ids.to(device), mask.to(device)


# ---------------------------------------------------------------- decoder load report
def _expected_decoder_key(key: str, kind: str) -> bool:
    """Keys whose absence (or surplus) is expected when an encoder checkpoint is loaded as a decoder: the new
    cross-attention blocks and LM head are missing from it; its pooler has no place in a causal LM."""
    if kind == "missing":
        return "crossattention" in key or key.startswith(("cls.", "lm_head")) or ".lm_head." in key
    return kind == "unexpected" and "pooler." in key


class _LoadReportFilter(logging.Filter):
    """Holds back transformers' LOAD REPORT table and its "checkpoint seem corrupted" line (for the untied LM-head
    bias) of the decoder load only; `_report_decoder_load` reports the same keys as expected or not."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        return not ("LOAD REPORT" in message or message.startswith("This checkpoint seem corrupted"))


@contextlib.contextmanager
def _held_back_load_report():
    hf_logger = logging.getLogger("transformers.modeling_utils")
    held = _LoadReportFilter()
    hf_logger.addFilter(held)
    try:
        yield
    finally:
        hf_logger.removeFilter(held)


def _report_decoder_load(source: str, info: dict) -> None:
    """One info line for the expected new weights; a warning naming any other missing/unexpected/mismatched key."""
    expected = {
        kind: [k for k in info.get(f"{kind}_keys", ()) if _expected_decoder_key(k, kind)]
        for kind in ("missing", "unexpected")
    }
    other = {
        kind: sorted(set(map(str, info.get(f"{kind}_keys", ()))) - set(expected.get(kind, [])))
        for kind in ("missing", "unexpected", "mismatched")
    }
    logger.info(
        "TSDAE decoder from %s: %d cross-attention/LM-head tensors newly initialised, %d pooler tensors unused "
        "(expected: an encoder checkpoint has no decoder parts)",
        source,
        len(expected["missing"]),
        len(expected["unexpected"]),
    )
    for kind, keys in other.items():
        if keys:
            logger.warning("TSDAE decoder from %s: %d %s weights: %s", source, len(keys), kind, ", ".join(keys))
