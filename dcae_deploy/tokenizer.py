"""Torch-free tokenizers, shared by the trainer, the exporter and the runtime.

:class:`WordTokenizer` is the demo text encoder's tokenizer: lower-cased words from a fixed vocabulary,
``<bos>`` first, padded with ``<pad>`` to a fixed length, ``<unk>`` for words it does not know. Its
vocabulary is a small JSON file that travels with the weights and with the exported graphs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dcae_deploy.errors import DcaeDeployError

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
SPECIALS = (PAD, BOS, UNK)
VOCAB_FILE = "vocab.json"
_WORD = re.compile(r"[a-z0-9]+")
_NOT_READ = re.compile(r"[^\x00-\x7f]")  # what the word pattern drops that is not ASCII spacing or punctuation


class WordTokenizer:
    """Words -> ids: ``<bos>`` + up to ``max_length - 1`` words, right-padded; mask 1 on real tokens."""

    def __init__(self, words: Sequence[str], max_length: int) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (<bos> and one word), got {max_length}")
        self.vocab = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def words(self, prompt: str) -> list[str]:
        return _WORD.findall(prompt.lower())

    def unknown_words(self, prompt: str) -> list[str]:
        return [w for w in self.words(prompt) if w not in self.ids]

    def check_prompt(self, prompt: str, instruction: bool = True) -> list[str]:
        """Warnings about what encoding ``prompt`` loses (the common tokenizer interface): characters outside
        the ASCII words this tokenizer reads, words outside the vocabulary, words past its window.

        Raises:
            DcaeDeployError: a non-blank prompt of which no known word remains (it would be encoded as
                the empty prompt, an unconditional image).
        """
        words = self.words(prompt)
        unknown = sorted({w for w in words if w not in self.ids})
        if prompt.strip() and len(unknown) == len(set(words)):
            vocab = [w for w in self.vocab if w not in SPECIALS]
            shown = ", ".join(vocab) if len(vocab) <= 40 else f"{len(vocab)} words"
            raise DcaeDeployError(
                f"the prompt {prompt!r} has no word this text encoder knows, so it would be encoded as the empty "
                f"prompt (an unconditional image); its vocabulary: {shown}"
            )
        notes = []
        dropped = sorted(set(_NOT_READ.findall(prompt)))
        if dropped:
            notes.append(f"characters the word tokenizer cannot read are dropped: {' '.join(dropped)}")
        if unknown:
            notes.append(f"words outside the vocabulary are ignored as <unk>: {', '.join(unknown)}")
        if len(words) > self.max_length - 1:
            notes.append(f"the prompt has {len(words)} words; the text encoder reads only the first "
                         f"{self.max_length - 1} (up to {words[self.max_length - 2]!r})")
        return notes

    def __call__(self, prompts: Sequence[str], instruction: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both int64 (batch, max_length). ``instruction`` is the common tokenizer
        interface (see :class:`GemmaTokenizer`); a word vocabulary has no instruction prefix to leave out."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = np.full((len(prompts), self.max_length), self.ids[PAD], dtype=np.int64)
        mask = np.zeros((len(prompts), self.max_length), dtype=np.int64)
        unk = self.ids[UNK]
        for row, prompt in enumerate(prompts):
            tokens = [self.ids[BOS]] + [self.ids.get(w, unk) for w in self.words(prompt)]
            tokens = tokens[: self.max_length]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask

    def save(self, folder: str | Path) -> Path:
        from dcae_deploy.checkpoints import write_json

        path = Path(folder) / VOCAB_FILE
        write_json(path, {"type": "word", "vocab": self.vocab, "max_length": self.max_length})
        return path

    @classmethod
    def load(cls, folder_or_file: str | Path) -> "WordTokenizer":
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / VOCAB_FILE
        try:
            data = json.loads(path.read_text())
            return cls(data["vocab"], int(data["max_length"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DcaeDeployError(f"cannot read the word vocabulary {path}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Gemma-2 (SANA's text encoder): the ``tokenizers`` library, SANA's prompt formatting, no torch
# ---------------------------------------------------------------------------------------------

# diffusers.SanaPipeline's default ``complex_human_instruction`` (identical to NVlabs/Sana's chi_prompt).
SANA_INSTRUCTION = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for "
    "image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
    "relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping "
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:",
    "User Prompt: ",
)
TOKENIZER_JSON = "tokenizer.json"
PROMPT_FILE = "prompt.json"  # our settings next to tokenizer.json: max_length, instruction, pad token
HF_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILES = (VOCAB_FILE, TOKENIZER_JSON)
_GEMMA_SPECIALS = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "mask_token": "<mask>"}  # what marks a folder as holding a tokenizer


class GemmaTokenizer:
    """Gemma-2's tokenizer with SANA's prompt formatting (``diffusers.SanaPipeline._get_gemma_prompt_embeds``).

    ``tok(prompts)`` lower-cases and strips each prompt, prefixes the complex human instruction (CHI),
    tokenises with ``<bos>``, truncates and right-pads to ``len(tokens(CHI)) + max_length - 2`` tokens;
    ``tok(prompts, instruction=False)`` (the negative prompt in SANA) pads to ``max_length``. The text
    encoder graph keeps BOS + the last ``max_length - 1`` output positions; :func:`select_positions`
    picks the same positions of the attention mask for the denoiser.

    Only the ``tokenizers`` library is needed (torch-free runtime); ``tokenizer.json`` as written by
    :meth:`save` is the exact backend ``transformers.AutoTokenizer`` builds (normaliser, BPE,
    ``<bos>`` post-processor), so ids equal those of the transformers tokenizer.
    """

    def __init__(self, backend, max_length: int = 300, instruction: Sequence[str] | None = SANA_INSTRUCTION,
                 pad_token: str = "<pad>") -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (<bos> and one token), got {max_length}")
        self.backend = backend
        self.max_length = max_length
        self.instruction = tuple(instruction) if instruction else None
        self.pad_token = pad_token
        self.pad_id = backend.token_to_id(pad_token)
        if self.pad_id is None:
            raise DcaeDeployError(f"the tokenizer has no pad token {pad_token!r}")
        from tokenizers import Tokenizer

        self._work = Tokenizer.from_str(backend.to_str())  # truncation/padding are state: set per call on a copy
        self._chi = "\n".join(self.instruction) if self.instruction else None
        self._chi_tokens = len(self._encode([self._chi], None)[0][0]) if self._chi is not None else 0

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def input_lengths(self) -> tuple[int, int]:
        """(tokens without the instruction, tokens with it): the text encoder's input length range."""
        return self.max_length, self.length(instruction=True)

    def unknown_words(self, prompt: str) -> list[str]:
        """None: the BPE falls back to bytes, so every character has a token (the common tokenizer interface)."""
        return []

    def check_prompt(self, prompt: str, instruction: bool = True) -> list[str]:
        """Warnings about what encoding ``prompt`` loses (the common tokenizer interface): only its tail past
        the text encoder's window (the BPE falls back to bytes, so every character has a token)."""
        text = prompt.lower().strip()
        if instruction and self._chi is not None:
            text = self._chi + text
        total, window = len(self._encode([text], None)[0][0]), self.length(instruction)
        if total <= window:
            return []
        return [f"the prompt is {total} tokens long{' with the instruction' if instruction and self._chi else ''}; "
                f"the text encoder keeps the first {window}, so its last {total - window} tokens are cut"]

    def length(self, instruction: bool = True) -> int:
        """Tokens per row: ``len(tokens(CHI)) + max_length - 2`` with the instruction, else ``max_length``."""
        if instruction and self._chi is not None:
            return self._chi_tokens + self.max_length - 2
        return self.max_length

    def __call__(self, prompts: Sequence[str], instruction: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both int64 (batch, :meth:`length`)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        texts = [p.lower().strip() for p in prompts]
        if instruction and self._chi is not None:
            texts = [self._chi + t for t in texts]
        rows = self._encode(texts, self.length(instruction))
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        mask = np.array([r[1] for r in rows], dtype=np.int64)
        return ids, mask

    def _encode(self, texts: list[str], length: int | None):
        """Tokenise with special tokens; truncate and right-pad to ``length`` (None: neither)."""
        tok = self._work
        tok.no_truncation()
        tok.no_padding()
        if length is not None:
            tok.enable_truncation(max_length=length, direction="right")
            tok.enable_padding(direction="right", pad_id=self.pad_id, pad_token=self.pad_token, length=length)
        return [(e.ids, e.attention_mask) for e in tok.encode_batch(texts, add_special_tokens=True)]

    def save(self, folder: str | Path) -> Path:
        """Write ``tokenizer.json`` (the backend, no padding/truncation state) and ``prompt.json``; returns the former."""
        from dcae_deploy.checkpoints import atomic_write, write_json
        from tokenizers import Tokenizer

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tok = Tokenizer.from_str(self.backend.to_str())
        tok.no_truncation()
        tok.no_padding()
        path = folder / TOKENIZER_JSON
        atomic_write(path, lambda tmp: Path(tmp).write_text(tok.to_str()))
        write_json(folder / PROMPT_FILE, {
            "type": "gemma2",
            "max_length": self.max_length,
            "instruction": list(self.instruction) if self.instruction else None,
            "pad_token": self.pad_token,
        })
        # so that transformers.AutoTokenizer reads the folder too (diffusers, tests)
        specials = {k: t for k, t in _GEMMA_SPECIALS.items() if self.backend.token_to_id(t) is not None}
        write_json(folder / HF_CONFIG_FILE, {
            "tokenizer_class": "GemmaTokenizer",
            **specials,
            "pad_token": self.pad_token,
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": 1_000_000,
        })
        return path

    @classmethod
    def load(cls, folder_or_file: str | Path, max_length: int | None = None) -> "GemmaTokenizer":
        """Read a folder written by :meth:`save` (or a Hugging Face tokenizer folder: ``tokenizer.json``,
        ``tokenizer_config.json`` for the pad token; then SANA's instruction and ``max_length`` apply)."""
        path = Path(folder_or_file)
        folder = path if path.is_dir() else path.parent
        tok_path = folder / TOKENIZER_JSON
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise DcaeDeployError("the Gemma tokenizer needs the `tokenizers` package: pip install tokenizers") from exc
        if not tok_path.is_file():
            raise DcaeDeployError(f"no {TOKENIZER_JSON} in {folder}: point at a Gemma-2 tokenizer folder")
        try:
            backend = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # noqa: BLE001 - the Rust library raises plain Exception
            raise DcaeDeployError(f"cannot read the tokenizer {tok_path}: {exc}") from exc
        settings = _read_prompt_settings(folder)
        return cls(
            backend,
            max_length=max_length or settings.get("max_length", 300),
            instruction=settings.get("instruction", SANA_INSTRUCTION),
            pad_token=settings.get("pad_token", "<pad>"),
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path, max_length: int = 300) -> "GemmaTokenizer":
        """A Hugging Face tokenizer folder through ``transformers.AutoTokenizer`` (local files only) when
        transformers is installed, so that the backend is exactly the one diffusers uses; else :meth:`load`."""
        folder = Path(folder)
        if (folder / PROMPT_FILE).is_file():
            return cls.load(folder, max_length)
        try:
            from transformers import AutoTokenizer
        except ImportError:
            return cls.load(folder, max_length)
        from tokenizers import Tokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DcaeDeployError(f"cannot load the tokenizer in {folder}: {exc}") from exc
        backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        return cls(backend, max_length=max_length, pad_token=str(hf.pad_token or "<pad>"))


def _read_prompt_settings(folder: Path) -> dict:
    if (folder / PROMPT_FILE).is_file():
        try:
            return json.loads((folder / PROMPT_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise DcaeDeployError(f"cannot read {folder / PROMPT_FILE}: {exc}") from exc
    settings: dict = {}
    config = folder / HF_CONFIG_FILE
    if config.is_file():
        try:
            pad = json.loads(config.read_text()).get("pad_token")
        except (OSError, ValueError) as exc:
            raise DcaeDeployError(f"cannot read {config}: {exc}") from exc
        if isinstance(pad, dict):
            pad = pad.get("content")
        if pad:
            settings["pad_token"] = pad
    return settings


def select_positions(mask: np.ndarray, tokens: int) -> np.ndarray:
    """The text encoder graph's output positions of a (batch, L) mask: BOS + the last ``tokens - 1``.

    The identity when ``L == tokens`` (word tokenizer, or Gemma without the instruction).
    """
    if mask.shape[-1] == tokens:
        return mask
    return np.concatenate([mask[..., :1], mask[..., mask.shape[-1] - tokens + 1:]], axis=-1)


def load_tokenizer(path: str | Path):
    """Any tokenizer written next to an export (``DIR/tokenizer/``): a word vocabulary or a Gemma tokenizer."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (path.is_file() and path.name == VOCAB_FILE) or (path.is_dir() and (folder / VOCAB_FILE).is_file()):
        return WordTokenizer.load(path)
    return GemmaTokenizer.load(path)


def tiny_gemma_tokenizer(max_length: int) -> GemmaTokenizer:
    """A small deterministic Gemma-style BPE (byte fallback, ``▁`` for spaces, ``<bos>`` prefix) for tests.

    Trained in milliseconds on SANA's instruction and the demo vocabulary; nothing is downloaded.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")  # merges stay inside words
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=[chr(c) for c in range(32, 127)] + ["\n", "\u2581"],
        show_progress=False,
    )
    corpus = list(SANA_INSTRUCTION) * 3 + ["a red circle on a blue background", "a green star on a white background"]
    tok.train_from_iterator(corpus, trainer)
    tok.pre_tokenizer = None  # as Gemma's tokenizer.json: the normaliser's "\u2581" and the merges do the work
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return GemmaTokenizer(tok, max_length=max_length)
