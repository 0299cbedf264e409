"""The slow SentencePiece Llama tokenizer, as the original EventGPT loads it
(`AutoTokenizer.from_pretrained(path, use_fast=False)` in inference.py, i.e. transformers 4.37.2's
`LlamaTokenizer`, models/llama/tokenization_llama.py and tokenization_utils.py).

transformers 5 has no slow tokenizers: it converts `tokenizer.model` into a `tokenizers` one, which
needs protobuf and is not the code the original ran. This class reproduces 4.37.2's slow path on top
of the `sentencepiece` library:

- added tokens (the tokenizer's own special tokens, `added_tokens_decoder` / `added_tokens.json`,
  and `add_tokens`) split the text first, longest match first; their lstrip / rstrip flags strip
  the neighbouring text; every other piece of text is SentencePiece-encoded;
- `legacy` (tokenizer_config.json; unset means True, as in 4.37.2): legacy encodes each piece as
  is; legacy=False prepends "▁" to the whole text, loads the model without the dummy prefix and
  encodes a piece that starts with "▁" or " " as `unk_token + piece` minus the unk pieces;
- `add_bos_token` (default True) / `add_eos_token` (default False) wrap the ids;
- a token added with `add_tokens` gets id `len(tokenizer)`, the size of the vocabulary including
  the added tokens not in the SentencePiece model.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import torch

SPIECE_UNDERLINE = "▁"
SP_MODEL = "tokenizer.model"


class _Added:
    def __init__(self, content: str, special: bool = True, lstrip: bool = False, rstrip: bool = False,
                 single_word: bool = False):
        self.content, self.special, self.lstrip, self.rstrip, self.single_word = content, special, lstrip, rstrip, single_word


def _token_str(v) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return v.get("content")


class SentencePieceLlamaTokenizer:
    is_fast = False

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        path = Path(path)
        self.name_or_path = str(path)
        cfg = _read_json(path / "tokenizer_config.json")
        special_map = _read_json(path / "special_tokens_map.json")
        self.legacy = True if cfg.get("legacy") is None else bool(cfg["legacy"])
        self.add_bos_token = bool(cfg.get("add_bos_token", True))
        self.add_eos_token = bool(cfg.get("add_eos_token", False))
        proto = (path / SP_MODEL).read_bytes()
        self.sp = spm.SentencePieceProcessor()
        if self.legacy:
            self.sp.LoadFromSerializedProto(proto)
        else:
            self.sp.LoadFromSerializedProto(_without_dummy_prefix(proto))
        self.vocab_size = self.sp.get_piece_size()
        names = {}
        for role, default in (("unk_token", "<unk>"), ("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", None)):
            names[role] = _token_str(cfg.get(role, special_map.get(role, default)))
        self.unk_token, self.bos_token, self.eos_token, self.pad_token = (
            names["unk_token"], names["bos_token"], names["eos_token"], names["pad_token"])
        self._added: dict[int, _Added] = {}
        self._encoder: dict[str, int] = {}
        for idx, tok in (cfg.get("added_tokens_decoder") or {}).items():
            self._register(int(idx), _Added(tok["content"], tok.get("special", True), tok.get("lstrip", False),
                                            tok.get("rstrip", False), tok.get("single_word", False)))
        for content, idx in _read_json(path / "added_tokens.json").items():
            if content not in self._encoder:
                self._register(int(idx), _Added(content, special=False))
        for t in (self.unk_token, self.bos_token, self.eos_token, self.pad_token):
            if t is not None and t not in self._encoder:
                self.add_tokens([t], special_tokens=True)
        self._unk_len = len(self.sp.encode(str(self.unk_token)))

    # -- vocabulary ------------------------------------------------------------------------------
    def _register(self, idx: int, tok: _Added) -> None:
        self._added[idx] = tok
        self._encoder[tok.content] = idx
        self._split_re = None

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self._encoder)
        return vocab

    def __len__(self) -> int:
        return len(self.get_vocab())

    def add_tokens(self, tokens, special_tokens: bool = False) -> int:
        vocab = self.get_vocab()
        new_idx, added = len(vocab), 0
        for t in tokens:
            if not t or t in self._encoder:
                continue
            if t in vocab:
                idx = vocab[t]
            else:
                idx, added = new_idx + added, added + 1
            self._register(idx, _Added(t, special=special_tokens or t in self.all_special_tokens))
        return added

    @property
    def all_special_tokens(self) -> list[str]:
        named = [t for t in (self.bos_token, self.eos_token, self.unk_token, self.pad_token) if t]
        return named + [a.content for a in self._added.values() if a.special and a.content not in named]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._encoder[tokens] if tokens in self._encoder else self.sp.piece_to_id(tokens)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def _id(self, token):
        return None if token is None else self.convert_tokens_to_ids(token)

    bos_token_id = property(lambda self: self._id(self.bos_token))
    eos_token_id = property(lambda self: self._id(self.eos_token))
    unk_token_id = property(lambda self: self._id(self.unk_token))
    pad_token_id = property(lambda self: self._id(self.pad_token))

    # -- tokenization ----------------------------------------------------------------------------
    def _split_added(self, text: str) -> list[str]:
        if not self._encoder:
            return [text]
        if self._split_re is None:
            alts = sorted(self._encoder, key=len, reverse=True)
            self._split_re = re.compile("(" + "|".join(re.escape(a) for a in alts) + ")")
        return [p for p in self._split_re.split(text)] if text else [text]

    def _sp_tokenize(self, text: str) -> list[str]:
        tokens = self.sp.encode(text, out_type=str)
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return tokens
        tokens = self.sp.encode(self.unk_token + text, out_type=str)
        return tokens[self._unk_len:] if len(tokens) >= self._unk_len else tokens

    def _tokenize_added(self, text: str) -> list[str]:
        parts = self._split_added(text)
        for i, part in enumerate(parts):
            if part in self._encoder:
                tok = self._added[self._encoder[part]]
                left = parts[i - 1] if i > 0 else None
                right = parts[i + 1] if i < len(parts) - 1 else None
                if tok.rstrip and right:
                    parts[i + 1] = right.lstrip()
                if tok.lstrip and left:
                    parts[i - 1] = left.rstrip()
                if tok.single_word and left and left[-1] != " ":
                    parts[i - 1] += part
                    parts[i] = ""
                elif tok.single_word and right and right[0] != " ":
                    parts[i + 1] = part + parts[i + 1]
                    parts[i] = ""
        out: list[str] = []
        for part in parts:
            if not part:
                continue
            out.extend([part] if part in self._encoder else self._sp_tokenize(part))
        return out

    def tokenize(self, text: str) -> list[str]:
        if self.legacy or len(text) == 0:
            return self._tokenize_added(text)
        tokens = self._tokenize_added(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        if add_special_tokens:
            ids = ([self.bos_token_id] if self.add_bos_token else []) + ids + (
                [self.eos_token_id] if self.add_eos_token else [])
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True, return_tensors: str | None = None):
        ids = self.encode(text, add_special_tokens=add_special_tokens)
        if return_tensors == "pt":
            return SimpleNamespace(input_ids=torch.tensor([ids], dtype=torch.long))
        if return_tensors is not None:
            raise ValueError(f"unsupported return_tensors {return_tensors!r}")
        return SimpleNamespace(input_ids=ids)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        out, run = [], []
        for i in ids:
            if i in self._added:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                if not (skip_special_tokens and self._added[i].special):
                    out.append(self._added[i].content)
            elif 0 <= i < self.vocab_size:
                run.append(int(i))
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def _without_dummy_prefix(proto: bytes) -> bytes:
    """The model with normalizer_spec.add_dummy_prefix = False (what 4.37.2 does for legacy=False)."""
    from sentencepiece import sentencepiece_model_pb2 as pb2

    model = pb2.ModelProto.FromString(proto)
    model.normalizer_spec.add_dummy_prefix = False
    return model.SerializeToString()
