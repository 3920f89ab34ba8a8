"""The prompt tokenizer of the tiny text-to-image model: a word-level Hugging Face tokenizer
over our own vocabulary, saved and loaded in the `save_pretrained`/`from_pretrained` layout
(tokenizer.json, tokenizer_config.json).

Its ids are the base model's text ids: the words first, unused ids after them, and the
special tokens at the end of the text vocabulary where LLaDAConfig puts them by default
(pad = text_vocab - 1, then mask, boi, eoi, boa, eoa, eol). Prompts are lower-cased, stripped
of punctuation, split on whitespace and left-padded to the model's prompt length, so the prompt
ends right before the image as in Lumina-DiMOO. A word outside the vocabulary is an error
naming it (an <unk> id would silently become a different prompt).

Reading a tokenizer needs only the `tokenizers` package (`TextTokenizer`, below): the runtime
does not import transformers, which costs seconds at start-up. Building one (training) and
tokenizers from elsewhere saved by transformers read alike; the ids are the same as
transformers' `PreTrainedTokenizerFast` gives (tested).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

from ..errors import CheckpointError, ConfigError, PromptError
from ..fileio import atomic_dir, clip, read_regular

UNK = "<unk>"
# in LLaDAConfig's default order: pad is the last text id, then mask, boi, eoi, boa, eoa, eol
SPECIALS = ("<|pad|>", "<|mask|>", "<|boi|>", "<|eoi|>", "<|boa|>", "<|eoa|>", "<|eol|>")


def build_tokenizer(words: Sequence[str], text_vocab: int, max_text: int):
    """A `PreTrainedTokenizerFast` for these words, with ids laid out for a `text_vocab` model."""
    words = sorted(set(w.lower() for w in words))
    n_unused = text_vocab - 1 - len(words) - len(SPECIALS)
    if n_unused < 0:
        raise ConfigError(f"{len(words)} words and {len(SPECIALS) + 1} special tokens do not fit {text_vocab} text ids")
    names = [UNK, *words, *(f"<unused_{i}>" for i in range(n_unused)), *reversed(SPECIALS)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(names)}, unk_token=UNK))
    # punctuation is dropped: "a cat, on the left." is "a cat on the left"
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from transformers import PreTrainedTokenizerFast  # heavy (seconds): only training builds a tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=SPECIALS[0], mask_token=SPECIALS[1],
        additional_special_tokens=list(SPECIALS[2:]), padding_side="left", model_max_length=max_text)


def tokenizer_path(checkpoint: str | Path) -> Path:
    """Where a base checkpoint's tokenizer lives: CHECKPOINT.tokenizer/ beside it, or, for a checkpoint
    directory inside a saved pipeline (DIR/base/), the pipeline's DIR/tokenizer/."""
    p = Path(checkpoint)
    return p.parent / "tokenizer" if p.is_dir() else Path(f"{checkpoint}.tokenizer")


def save_tokenizer(tokenizer, path: str | Path) -> Path:
    """`save_pretrained` into a directory, atomically (a failed save leaves no directory)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return path


# tokenizer_config.json's special-token fields (transformers 4 and 5 write them alike)
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _content(v) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):  # a serialized AddedToken
        return v["content"]
    return None


class TextTokenizer:
    """A tokenizer saved in the `save_pretrained` layout, read with the `tokenizers` package only.

    It answers what prompt encoding asks of transformers' `PreTrainedTokenizerFast` (same names,
    same ids) and saves back the files it was read from."""

    hf_class = "PreTrainedTokenizerFast"  # what a saved pipeline's model_index.json names

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        try:
            self.backend_tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode())
            config = {}
            for name in reversed(_CONFIG_FILES):  # tokenizer_config.json wins over special_tokens_map.json
                if name in files:
                    doc = json.loads(files[name])
                    config.update(doc if isinstance(doc, dict) else {})
        except Exception as e:  # bad JSON, or tokenizers' own exception type for a bad tokenizer.json
            raise CheckpointError(f"tokenizer files are not readable: {' '.join(str(e).split())[:300]}") from None
        self.special: dict[str, str] = {k: c for k in _SPECIAL_KEYS if (c := _content(config.get(k))) is not None}
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        extra = extra.values() if isinstance(extra, dict) else extra
        self.extra = [c for c in map(_content, extra) if c is not None]
        # as transformers does: a special token the vocabulary lacks is added (at the end)
        missing = [t for t in [*self.special.values(), *self.extra] if self.backend_tokenizer.token_to_id(t) is None]
        if missing:
            self.backend_tokenizer.add_special_tokens([AddedToken(t, special=True) for t in dict.fromkeys(missing)])

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            i = self.backend_tokenizer.token_to_id(tokens)
            return self.unk_token_id if i is None else i
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(i) for i in ids]

    def _id(self, key: str) -> int | None:
        token = self.special.get(key)
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id("unk_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._id("pad_token")

    @property
    def mask_token_id(self) -> int | None:
        return self._id("mask_token")

    @property
    def all_special_ids(self) -> list[int]:
        tokens = dict.fromkeys([*self.special.values(), *self.extra])
        return [i for t in tokens if (i := self.backend_tokenizer.token_to_id(t)) is not None]

    @property
    def added_tokens_decoder(self) -> dict:
        return self.backend_tokenizer.get_added_tokens_decoder()

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (directory / name).write_bytes(data)


# the files a fast tokenizer's save_pretrained layout has: only these are read or copied into a
# bundle, never whatever else the folder holds (notes, links to private files)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja",
                   "chat_template.json")
MAX_TOKENIZER_FILE = 256 << 20


def tokenizer_files(path: str | Path) -> list[str]:
    """The tokenizer files of a folder, by the format's names: each a regular file in the folder
    itself (a symbolic link, device or FIFO under one of these names is refused)."""
    path = Path(path)
    names = []
    for name in TOKENIZER_FILES:
        f = path / name
        if not f.exists() and not f.is_symlink():
            continue
        st = f.lstat()
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"tokenizer file {f} is a symbolic link, device or FIFO; a tokenizer is plain files")
        names.append(name)
    if "tokenizer.json" not in names:
        raise CheckpointError(f"no tokenizer at {path} (tokenizer.json missing)")
    return names


def load_tokenizer(path: str | Path, files: Sequence[str] | None = None):
    """A tokenizer saved with `save_pretrained`, read with the `tokenizers` package only. Only its
    format's files are read (`files`: a bundle's hashed ones; an extra file dropped beside them must
    change nothing), each a regular file of bounded size."""
    path = Path(path)
    names = tokenizer_files(path) if files is None else list(files)
    if "tokenizer.json" not in names or not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"no tokenizer at {path} (tokenizer.json missing)")
    names = [n for n in ("tokenizer.json", *_CONFIG_FILES) if n in names]  # what the tokenizer reads
    return TextTokenizer({name: read_regular(path / name, MAX_TOKENIZER_FILE, "tokenizer file", CheckpointError)
                          for name in names})


def encode_prompts(tokenizer, prompts: Sequence[str], max_text: int, text_vocab: int, template: str = "{prompt}",
                   pad_id: int | None = None) -> torch.Tensor:
    """Prompt ids [n, max_text], left-padded with `pad_id` (default: the tokenizer's); each prompt
    written into `template` first (Lumina-DiMOO wraps it in its system/user turns). A clear error
    for unknown words, control tokens typed into the text, empty or too long prompts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    unk = tokenizer.convert_tokens_to_ids(UNK)
    # every control token the tokenizer knows (its special tokens, and added ones marked special:
    # Lumina-DiMOO's <system>, <uncondition>, ...): typed into a prompt they would steer the sequence
    added = {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    specials = (set(tokenizer.all_special_ids) | added) - {unk}
    rows = []
    for p in prompts:
        if not isinstance(p, str):
            raise PromptError(f"a prompt is text, not {type(p).__name__} ({clip(repr(p))})")
        ids = tokenizer(p, add_special_tokens=False)["input_ids"]  # the user's words alone, checked here
        typed = [tokenizer.convert_ids_to_tokens(i) for i in ids if i in specials]
        if typed:  # the tokenizer matches special tokens in raw text: they would steer the sequence
            raise PromptError(f"prompt {clip(p)!r} contains the control token {typed[0]}; prompts are plain words")
        if not ids:  # would silently become the unconditional (all-padding) prompt
            raise PromptError(f"prompt {clip(p)!r} has no words; give a description such as 'a small cat on the left'")
        if unk in ids:
            backend = tokenizer.backend_tokenizer
            words = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(p))
            bad = [w for w, _ in words if tokenizer.convert_tokens_to_ids(w) == unk]
            unknown = clip(", ".join(repr(w) for w in bad))
            raise PromptError(f"prompt {clip(p)!r}: {unknown} not in the model's vocabulary "
                              f"(known words: {', '.join(known_words(tokenizer))})")
        # what the model gets is the tokenizer's default encoding of the templated prompt, as upstream
        # calls it (`tokenizer(text)`): the template's control tokens are the model's, not the user's, and
        # whatever the tokenizer's own post-processor adds stays (Lumina-DiMOO's adds no BOS: its
        # unconditional prompt is 14 ids, <system> first)
        ids = tokenizer(template.replace("{prompt}", p))["input_ids"]
        if len(ids) > max_text:
            raise PromptError(f"prompt {clip(p)!r} has {len(ids)} tokens; the model takes at most {max_text}")
        rows.append(ids)
    pad = tokenizer.pad_token_id if pad_id is None else pad_id
    ids = torch.full((len(rows), max_text), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, max_text - len(row):] = torch.tensor(row, dtype=torch.long)
    if ids.max() >= text_vocab:
        raise PromptError(f"the tokenizer gives ids up to {int(ids.max())}, beyond the model's {text_vocab} text ids")
    return ids


def known_words(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    return sorted(w for w in vocab if not (w.startswith("<") and w.endswith(">")))
