"""The Encoder: a Hugging Face encoder + pooling + optional L2 normalisation + query/document prefixes.

Prefixes, pooling and max length come from the model config and are applied here, in one place;
call sites only say whether a text is a "query" or a "document".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.errors import ConfigError, ModelError
from embedexp.io import replace_folder
from embedexp.models import cpu_dropout, lora
from embedexp.models.limits import check_max_seq_length, config_limit, folder_limit
from embedexp.models.pooling import POOLING_MODES, pool
from embedexp.progress import progress_bar

log = logging.getLogger(__name__)

KINDS = ("query", "document")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_ENCODE_BLOCK = 32  # batches tokenised per bulk call in encode()
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")
TORCH_DTYPES = ("float32", "bfloat16", "float16")


def _dtype_kwarg() -> str:
    """transformers >= 4.56 names from_pretrained's load dtype `dtype` (`torch_dtype` is deprecated there)."""
    from transformers import __version__

    return "dtype" if tuple(int(x) for x in __version__.split(".")[:2]) >= (4, 56) else "torch_dtype"


def _rotary(config) -> bool:
    """True for models with rotary position embeddings (transformers 5: rope_parameters; 4.x: rope_theta)."""
    return getattr(config, "rope_parameters", None) is not None or getattr(config, "rope_theta", None) is not None


def _plain(value):
    """An OmegaConf node (Hydra passes DictConfig/ListConfig to _target_ constructors) -> plain Python."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def check_model_folder(path: Path) -> None:
    """Fail with one clear line if a local model folder lacks what AutoModel/AutoTokenizer need."""
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist (model.model_name_or_path)")
    if not (path / "config.json").is_file():
        raise ModelError(f"model folder {path} has no config.json; expected a Hugging Face model folder")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise ModelError(f"model folder {path} has no weights; expected one of {', '.join(_WEIGHT_FILES)}")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"model folder {path} has no tokenizer; expected one of {', '.join(_TOKENIZER_FILES)}")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or Path(name).exists()


class Encoder(nn.Module):
    """Text -> embedding.

    Args:
        model_name_or_path: local Hugging Face folder (or hub name when online).
        pooling: "mean" | "cls" | "last_token".
        normalize: L2-normalise embeddings.
        max_seq_length: truncation length in tokens.
        query_prefix / document_prefix: prepended to queries / documents (E5/BGE style).
        trust_remote_code: passed to transformers; off unless the config says so.
        expected_dim: the embedding size the preset promises; a loaded model of another size is a ModelError.
        task: the retrieval instruction of instruct models (e5-mistral, gte-Qwen2); the preset puts it into
            query_prefix, it is kept here for the record only.
        peft: LoRA adapters (`embedexp.models.lora`): {method: lora, r, alpha, dropout, target_modules, bias};
            None or r=None trains every weight. With LoRA only the adapter weights require grad, and `save`
            writes the merged model plus the adapter alone in `<export>/adapter/`.
        gradient_checkpointing: Hugging Face's activation checkpointing (non-reentrant; dropout masks are
            replayed from the saved RNG state, so gradients equal the plain step's): recomputes each layer's
            activations in backward instead of keeping them.
        torch_dtype: load the weights as "float32" | "bfloat16" | "float16" (None: as transformers loads them,
            float32); embeddings from `encode` are float32 whatever the dtype.

    Raises:
        ConfigError: unknown pooling, or max_seq_length not a positive integer or above the model's limit
            (position table, minus RoBERTa's padding offset, or the tokenizer's model_max_length; see
            `embedexp.models.limits`), checked before the weights load; bad peft settings or torch_dtype;
            gradient checkpointing on a model that does not support it.
        ModelError: the folder or hub name cannot be loaded, or expected_dim differs from the model.

    With ``pooling="last_token"`` every text ends with the tokenizer's EOS token, the token decoder embedders
    (e5-mistral, gte-Qwen2) were trained to summarise the text into, also where the tokenizer does not append it
    (transformers 5 ignores ``add_eos_token: true`` in these models' tokenizer_config.json); a text longer
    than max_seq_length keeps max_seq_length - 1 tokens plus EOS. See `ensure_eos`. Such decoders with rotary
    positions (Qwen2, Mistral, Llama: attention sees only relative positions, so padding on either side gives
    the same embeddings) pad on the left, as e5-mistral and gte-Qwen2 do; the pooled EOS is every row's last
    column. Models with absolute positions (BERT) keep their tokenizer's padding side.
    """

    def __init__(
        self,
        model_name_or_path: str,
        pooling: str = "mean",
        normalize: bool = True,
        max_seq_length: int = 256,
        query_prefix: str = "",
        document_prefix: str = "",
        trust_remote_code: bool = False,
        name: str | None = None,
        expected_dim: int | None = None,
        task: str | None = None,
        peft: dict | None = None,
        gradient_checkpointing: bool = False,
        torch_dtype: str | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ConfigError(
                f"model.pooling={pooling!r} is not a pooling mode; expected one of {', '.join(POOLING_MODES)}"
            )
        if not isinstance(max_seq_length, int) or max_seq_length < 1:
            raise ConfigError(f"model.max_seq_length={max_seq_length!r}; expected a positive integer")
        self.model_name_or_path = str(model_name_or_path)
        self.name = name or Path(self.model_name_or_path).name
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.max_seq_length = max_seq_length
        self.prefixes = {"query": query_prefix or "", "document": document_prefix or ""}
        self.trust_remote_code = bool(trust_remote_code)
        self.task = task
        self.peft = lora.peft_settings("model.peft", _plain(peft))
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if torch_dtype is not None and torch_dtype not in TORCH_DTYPES:
            raise ConfigError(f"model.torch_dtype={torch_dtype!r}; expected one of {', '.join(TORCH_DTYPES)} or null")
        self.torch_dtype = torch_dtype
        # Matryoshka dims the weights were trained for (set by embedexp-train from loss.dims; saved with the folder
        # and read back by from_exported), so a later evaluate/export can list them in mteb's ModelMeta
        self.matryoshka_dims: list[int] | None = None
        self._manual_eos = False  # True: the tokenizer cannot be taught to append EOS; tokenize() appends it
        self._eos_added = False  # True: ensure_eos changed what the tokenizer makes
        self.tokenizer, self.backbone = self._load(self.model_name_or_path)
        self.ends_with_eos = self.ensure_eos() if self.pooling == "last_token" else False
        if self.ends_with_eos and _rotary(self.backbone.config):
            self.tokenizer.padding_side = "left"  # as e5-mistral / gte-Qwen2 pad: the EOS is every row's last column
        if expected_dim is not None and int(expected_dim) != self.dim:
            raise ModelError(
                f"model {self.model_name_or_path!r} gives {self.dim}-dim embeddings but model.expected_dim={expected_dim}; "
                "fix the preset or point model.model_name_or_path at the model it describes"
            )
        if self.peft is not None:
            self.backbone = lora.apply_lora(self.backbone, self.peft)
        if self.gradient_checkpointing:
            self._enable_gradient_checkpointing()
        self.backbone.train()  # from_pretrained returns eval mode; follow nn.Module's convention (encode() uses eval)
        cfg = self.backbone.config
        self._sdpa = getattr(cfg, "_attn_implementation", None) == "sdpa"
        self._attn_dropout = float(
            getattr(cfg, "attention_probs_dropout_prob", getattr(cfg, "attention_dropout", 0.0)) or 0.0
        )
        self._train_attention = "eager"
        if cpu_dropout.wanted():  # torch samples dropout masks on one core on this CPU (see cpu_dropout)
            cpu_dropout.replace_dropout_modules(self.backbone)
            self._train_attention = cpu_dropout.ATTENTION_NAME

    # ---------------------------------------------------------------- loading
    def _enable_gradient_checkpointing(self) -> None:
        """Hugging Face's checkpointing, non-reentrant (torch.utils.checkpoint with use_reentrant=False);
        `activation_checkpointing_enable` in transformers 5, `gradient_checkpointing_enable` before.

        Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings under LoRA are fine;
        transformers also hooks the input embeddings to require grad. The recomputation restores the RNG state
        of the first forward (preserve_rng_state), so dropout masks match, also under GradCache's replay.
        """
        model = self.hf_model
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(
                f"model.gradient_checkpointing=true: {type(model).__name__} does not support gradient "
                "checkpointing; expected false for this model"
            )
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def _load(self, name: str):
        from safetensors import SafetensorError
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(name).expanduser()
        if path.exists() or _looks_like_path(name):
            check_model_folder(path)
            name = str(path)
            check_max_seq_length("model.max_seq_length", self.max_seq_length, folder_limit(path))
        kwargs = {"trust_remote_code": self.trust_remote_code}
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
            config = AutoConfig.from_pretrained(name, **kwargs)
            # hub names and configs computed in code: the same rule on the loaded config, still before the weights
            check_max_seq_length(
                "model.max_seq_length",
                self.max_seq_length,
                config_limit(config.to_dict(), getattr(tokenizer, "model_max_length", None), where=f"{name}'s config"),
            )
            if self.torch_dtype is not None:
                kwargs[_dtype_kwarg()] = getattr(torch, self.torch_dtype)
            backbone = AutoModel.from_pretrained(name, config=config, **kwargs)
        except (
            OSError,
            RuntimeError,
            ValueError,
            SafetensorError,
        ) as e:  # unreachable hub name, broken folder, shape mismatch
            text = str(e).strip()
            if "mismatch" in text.lower():
                text = "weights do not match the shapes in config.json (size mismatch)"
            elif isinstance(e, SafetensorError):
                text = f"the weights file is corrupt or truncated ({text.splitlines()[0] if text else 'unreadable'})"
            first = text.splitlines()[0] if text else type(e).__name__
            raise ModelError(f"cannot load model {name!r}: {first}") from e
        if (
            tokenizer.pad_token is None and tokenizer.eos_token is not None
        ):  # decoder LMs (Mistral, Qwen) ship no pad token
            tokenizer.pad_token = tokenizer.eos_token
        vocab = len(tokenizer)
        emb = backbone.get_input_embeddings().num_embeddings
        if vocab > emb:
            raise ModelError(f"model {name!r}: tokenizer has {vocab} tokens but the model's embedding table has {emb}")
        return tokenizer, backbone

    @property
    def hf_model(self) -> nn.Module:
        """The transformers model under the LoRA wrapper (the backbone itself without LoRA)."""
        return self.backbone.get_base_model() if lora.is_peft_model(self.backbone) else self.backbone

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of the backbone, in elements (LoRA: the adapter weights only)."""
        return lora.trainable_parameters(self.backbone)

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # ---------------------------------------------------------------- EOS for last-token pooling
    def _tokenizer_appends_eos(self) -> bool:
        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer("a")["input_ids"]
        return eos is not None and len(ids) > 0 and ids[-1] == eos

    def ensure_eos(self) -> bool:
        """Make every tokenised text end with the tokenizer's EOS token; True when texts end with EOS.

        Last-token embedders (e5-mistral, gte-Qwen2) were trained on texts that end with EOS, and their
        tokenizer_config.json says ``add_eos_token: true``; transformers 5 no longer honours that flag, so the
        last token would be the text's last word. Where the tokenizer does not append EOS itself, a
        post-processing step that appends it is added to the fast tokenizer's pipeline (so truncation keeps
        room for it, `tokenize`, `tokenize_unpadded` and `pad` see it, and the exported tokenizer.json makes
        sentence-transformers append it too); tokenizers without a Rust pipeline get it appended in `_tokenize`.
        A tokenizer without an EOS token (BERT) is left as it is. Called by the constructor for
        ``pooling="last_token"``.
        """
        tok = self.tokenizer
        if tok.eos_token is None or tok.eos_token_id is None:
            return False
        if self._tokenizer_appends_eos():
            return True
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import processors

            eos = str(tok.eos_token)
            append = processors.TemplateProcessing(
                single=["$A:0", f"{eos}:0"],
                pair=["$A:0", "$B:1", f"{eos}:1"],
                special_tokens=[(eos, int(tok.eos_token_id))],
            )
            before = backend.post_processor
            backend.post_processor = append if before is None else processors.Sequence([before, append])
            if self._tokenizer_appends_eos():
                self._eos_added = True
                return True
            backend.post_processor = before
        self._manual_eos = self._eos_added = True
        return True

    # ---------------------------------------------------------------- tokenise / forward
    def add_prefix(self, texts: Iterable[str], kind: str) -> list[str]:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        prefix = self.prefixes[kind]
        return [prefix + t for t in texts]

    def _tokenize(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """Tokenise + truncate to max_seq_length, unpadded; appends EOS where `ensure_eos` could not teach the tokenizer."""
        if not self._manual_eos:
            return dict(self.tokenizer(texts, padding=False, truncation=True, max_length=self.max_seq_length))
        keep = self.max_seq_length - 1  # room for EOS
        enc = dict(self.tokenizer(texts, padding=False, truncation=True, max_length=max(keep, 1)))
        eos = int(self.tokenizer.eos_token_id)
        out: dict[str, list[list[int]]] = {}
        for key, rows in enc.items():
            fill = {"input_ids": eos, "attention_mask": 1}.get(key)
            out[key] = [list(r[:keep]) + [fill if fill is not None else (r[-1] if len(r) else 0)] for r in rows]
        return out

    def tokenize(self, texts: Sequence[str], kind: str) -> dict[str, torch.Tensor]:
        """Prefix + tokenise, padded to the longest text in the batch (dynamic padding).

        Returns tensors (batch, seq) on CPU: input_ids, attention_mask (and token_type_ids where the tokenizer
        makes them), each text truncated to max_seq_length tokens (last-token pooling: ending with EOS).
        """
        if self._manual_eos:
            return self.pad(self._tokenize(self.add_prefix(texts, kind)))
        return dict(
            self.tokenizer(
                self.add_prefix(texts, kind),
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            )
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable: tokenised features -> (batch, dim) embeddings."""
        self._pick_attention()
        inputs = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = self.backbone(**inputs, return_dict=True)
        emb = pool(out.last_hidden_state, features["attention_mask"], self.pooling)
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb

    def _pick_attention(self) -> None:
        """SDPA has no fused CPU kernel with dropout (it falls back to unfused math): CPU training with attention
        dropout runs eager attention instead (same math; ~12% faster bf16 steps, docs/benchmarks.md), with
        cpu_dropout's mask sampler where torch's is serial."""
        if not self._sdpa:
            return
        training_on_cpu = self.training and self._attn_dropout > 0 and self.device.type == "cpu"
        want = self._train_attention if training_on_cpu else "sdpa"
        if self.backbone.config._attn_implementation == want:
            return
        try:
            if want == cpu_dropout.ATTENTION_NAME:
                cpu_dropout.register_attention()  # again: a spawned DDP process unpickles the model without it
            self.backbone.set_attn_implementation(want)
        except (ValueError, ImportError, KeyError):  # a model without the attention interface: plain eager
            if want != cpu_dropout.ATTENTION_NAME:
                raise
            self._train_attention = want = "eager"
            self.backbone.set_attn_implementation(want)
        self._sdpa = self.backbone.config._attn_implementation == want  # a model that cannot switch stays as it is

    def tokenize_unpadded(self, texts: Sequence[str], kind: str) -> dict[str, list[list[int]]]:
        """Prefix + tokenise + truncate, without padding (one bulk call; the tokenizer's threads when allowed)."""
        from embedexp.runtime import parallel_tokenizing_allowed

        prefixed = self.add_prefix(texts, kind)
        if not parallel_tokenizing_allowed():
            return self._tokenize(prefixed)
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "true"  # read by the Rust tokenizer at each call
        try:
            return self._tokenize(prefixed)
        finally:
            if previous is None:
                del os.environ["TOKENIZERS_PARALLELISM"]
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous

    def pad(self, encoded: dict[str, list[list[int]]]) -> dict[str, torch.Tensor]:
        """Pad unpadded token lists to the batch's longest, on the tokenizer's padding side (= `tokenize`)."""
        return dict(self.tokenizer.pad(encoded, padding=True, return_tensors="pt"))

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        kind: str = "document",
        batch_size: int = 64,
        show_progress: bool = False,
        desc: str | None = None,
        precision: str = "fp32",
    ) -> torch.Tensor:
        """Inference: texts -> float32 (n, dim) on CPU.

        Texts are tokenised in bulk, a block of `_ENCODE_BLOCK` batches at a time, and batched by token length
        (longest first), so each batch is padded to the least width.
        precision: "fp32" (default: exact, no autocast) or "bf16" (the forward under
        `torch.autocast(device.type, torch.bfloat16)`; embeddings still returned as float32). Whether bf16 is worth
        it on this hardware is the caller's decision (`embedexp.trainer.inference.resolve_inference_precision`).
        Raises ConfigError for any other value.
        """
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"encode(precision={precision!r}); expected fp32 or bf16")
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # roughly by length: blocks stay alike
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        device = self.device
        block = batch_size * _ENCODE_BLOCK
        try:
            with progress_bar(-(-len(texts) // batch_size), desc or f"encode {kind}s", not show_progress) as bar:
                for b0 in range(0, len(texts), block):
                    ids = order[b0 : b0 + block]
                    enc = self.tokenize_unpadded([texts[i] for i in ids], kind)
                    by_len = sorted(range(len(ids)), key=lambda j: -len(enc["input_ids"][j]))
                    for s0 in range(0, len(by_len), batch_size):
                        sel = by_len[s0 : s0 + batch_size]
                        feats = self.pad({k: [v[j] for j in sel] for k, v in enc.items()})
                        feats = {k: v.to(device) for k, v in feats.items()}
                        if precision == "bf16":
                            with torch.autocast(device.type, dtype=torch.bfloat16):
                                emb = self(feats)
                        else:
                            emb = self(feats)
                        out[[ids[j] for j in sel]] = emb.float().cpu()
                        bar.update(1)
        finally:
            self.train(was_training)
        return out

    # ---------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """Hash of weights + everything that changes embeddings; keys caches of base-model results.

        With LoRA: the base weights under their own names (the hash of the same model without LoRA), then, once
        any adapter is non-zero (B starts at zero), the LoRA settings and adapter weights. A fresh adapter is
        the base model (reuses its cached base results); a trained one has its own hash.
        """
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps(self.settings(), sort_keys=True).encode())
        if self._eos_added:  # these texts now end with EOS: not the embeddings that older runs cached
            h.update(b"eos_appended")
        if lora.is_peft_model(self.backbone):
            base, adapters = lora.split_state_dict(self.backbone)
        else:
            base, adapters = self.backbone.state_dict(), {}
        for k, v in sorted(base.items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        if any(k.endswith("lora_B.weight") and bool(v.any()) for k, v in adapters.items()):
            h.update(json.dumps({"peft": self.peft}, sort_keys=True).encode())  # alpha / r scale the update
            for k, v in sorted(adapters.items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def settings(self) -> dict:
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
            "query_prefix": self.prefixes["query"],
            "document_prefix": self.prefixes["document"],
        }

    # ---------------------------------------------------------------- export
    def save(self, path: str | Path) -> Path:
        """Write a sentence-transformers folder (classic module layout, loads in ST 2.x-6.x).

        Written to a temporary sibling and renamed, so a crash never leaves a half model. The folder's
        ``similarity_fn_name`` is "cosine" whether or not the embeddings are normalised: embedexp's evaluator
        (`embedexp.eval.metrics.top_k`, the STS cosine, the mteb wrapper) always scores by cosine, as do the
        default losses, so ``SentenceTransformer(path).similarity`` and sentence-transformers' evaluators give
        embedexp's numbers (tests/test_export_and_decoders.py).
        For last-token pooling the saved tokenizer appends EOS (`ensure_eos`), as in training.

        With LoRA (`peft`) the folder holds the MERGED model (W + alpha/r * B A: every consumer of a plain
        folder works unchanged) and `<path>/adapter/` the adapter alone (peft's adapter_config.json +
        adapter_model.safetensors), which sentence-transformers loads onto the base model's folder with
        `SentenceTransformer(base).load_adapter(path / "adapter")`. The training model is not modified.
        """
        if self._manual_eos:
            log.warning(
                "model %s: the tokenizer has no Rust pipeline to append EOS; the exported folder's "
                "tokenizer will not append it, so sentence-transformers embeds texts without it",
                self.model_name_or_path,
            )
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if lora.is_peft_model(self.backbone):
            merged = lora.merged_state_dict(self.backbone)
            self.hf_model.save_pretrained(tmp, state_dict=merged, safe_serialization=True)
            self.backbone.save_pretrained(tmp / lora.ADAPTER_DIR)
        else:
            self.backbone.save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.normalize:
            modules.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
            (tmp / "2_Normalize").mkdir()
        _write_json(tmp / "modules.json", modules)
        _write_json(tmp / "sentence_bert_config.json", {"max_seq_length": self.max_seq_length, "do_lower_case": False})
        (tmp / "1_Pooling").mkdir()
        _write_json(
            tmp / "1_Pooling" / "config.json",
            {
                "word_embedding_dimension": self.dim,
                "pooling_mode_cls_token": self.pooling == "cls",
                "pooling_mode_mean_tokens": self.pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": self.pooling == "last_token",
                "include_prompt": True,
            },
        )
        _write_json(
            tmp / "config_sentence_transformers.json",
            {
                "prompts": dict(self.prefixes),
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",  # what embedexp evaluates (and trains) with, normalised or not
                "embedexp": self.settings(),
                **({"embedexp_training": {"matryoshka_dims": self.matryoshka_dims}} if self.matryoshka_dims else {}),
            },
        )
        return replace_folder(tmp, path)

    @classmethod
    def from_exported(cls, path: str | Path, **overrides) -> "Encoder":
        """Load a folder written by `save` (or any classic sentence-transformers folder) with its settings."""
        path = Path(path)
        settings: dict = {}
        matryoshka_dims = None
        st_cfg = path / "config_sentence_transformers.json"
        if st_cfg.is_file():
            data = json.loads(st_cfg.read_text())
            settings = dict(data.get("embedexp") or {})
            matryoshka_dims = (data.get("embedexp_training") or {}).get("matryoshka_dims")
            prompts = data.get("prompts") or {}
            settings.setdefault("query_prefix", prompts.get("query", ""))
            settings.setdefault("document_prefix", prompts.get("document", ""))
        pool_cfg = path / "1_Pooling" / "config.json"
        if "pooling" not in settings and pool_cfg.is_file():
            p = json.loads(pool_cfg.read_text())
            settings["pooling"] = (
                "cls"
                if p.get("pooling_mode_cls_token")
                else "last_token"
                if p.get("pooling_mode_lasttoken")
                else "mean"
            )
        if "normalize" not in settings and (path / "modules.json").is_file():
            settings["normalize"] = "Normalize" in (path / "modules.json").read_text()
        sb = path / "sentence_bert_config.json"
        if "max_seq_length" not in settings and sb.is_file():
            settings["max_seq_length"] = int(json.loads(sb.read_text()).get("max_seq_length", 256))
        settings.update(overrides)
        encoder = cls(str(path), **settings)
        if matryoshka_dims:
            encoder.matryoshka_dims = [int(d) for d in matryoshka_dims]
        return encoder


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
