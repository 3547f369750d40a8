"""Offline byte-level tokenizer with Qwen2-compatible special-token ids.

No tokenizer file is ever downloaded: the vocabulary is built in memory with the `tokenizers` library and
wrapped in a transformers fast tokenizer. Every UTF-8 byte becomes one token (text is ~3-4x longer than with
Qwen2's BPE; multimodal token counts are unaffected); :func:`special_token_ids` gives the id layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "IMAGE_TOKEN",
    "MODEL_MAX_LENGTH",
    "NUM_BYTE_TOKENS",
    "PAD_TOKEN",
    "QWEN2_NUM_REGULAR_TOKENS",
    "SPECIAL_TOKENS",
    "VIDEO_TOKEN",
    "build_tokenizer",
    "special_token_ids",
]

NUM_BYTE_TOKENS = 256
"""Number of byte tokens at the start of the vocabulary (ids 0..255)."""

QWEN2_NUM_REGULAR_TOKENS = 151643
"""Number of regular (non-special) tokens of the Qwen2 vocabulary: '<|endoftext|>' is id 151643."""

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
"""Special tokens in id order, appended right after the regular tokens."""

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"

MODEL_MAX_LENGTH = 32768
"""Qwen2 tokenizers' model_max_length."""

# The llava-hf LLaVA-OneVision chat template. For list-of-dict content it renders exactly
# what the llava-hf/llava-onevision-qwen2-*-hf checkpoints' chat_template.json renders:
#   '<|im_start|>user\n<image>\n<video>\nWhat happens?<|im_end|>\n<|im_start|>assistant\n'
# (all images first, then all videos, each followed by '\n', then the text parts; assistant text
# is wrapped in {% generation %} for assistant-token masks). As an extension, plain-string
# content is rendered verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{% endgeneration %}"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{% else %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'video' %}{{ '<video>\\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ item['text'] }}{% endgeneration %}"
    "{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def special_token_ids(num_regular_tokens: int | None = None) -> dict[str, int]:
    """Ids of :data:`SPECIAL_TOKENS` for a tokenizer built with ``num_regular_tokens``.

    Computed arithmetically (no tokenizer is built), e.g. ``special_token_ids(151643)["<video>"] == 151647``
    and ``special_token_ids()["<video>"] == 260``. The layout (``None`` -> the "tiny" layout, ``R = 256``)::

        0 .. 255               one token per byte (GPT-2 style ByteLevel alphabet; id == byte value)
        256 .. R-1             '<|reserved_N|>' fillers, N == id (only if num_regular_tokens > 256)
        R + 0                  '<|endoftext|>'   (pad token)
        R + 1                  '<|im_start|>'
        R + 2                  '<|im_end|>'      (eos token)
        R + 3                  '<image>'
        R + 4                  '<video>'

    With ``num_regular_tokens=151643`` (:data:`QWEN2_NUM_REGULAR_TOKENS`) the special ids are exactly Qwen2's /
    llava-hf LLaVA-OneVision's: 151643 .. 151647.
    """
    first = _validated_regular_tokens(num_regular_tokens)
    return {token: first + offset for offset, token in enumerate(SPECIAL_TOKENS)}


def _validated_regular_tokens(num_regular_tokens: int | None) -> int:
    if num_regular_tokens is None:
        return NUM_BYTE_TOKENS
    if isinstance(num_regular_tokens, bool) or not isinstance(num_regular_tokens, int):
        raise ValueError(f"num_regular_tokens must be an int >= {NUM_BYTE_TOKENS} or None, got {num_regular_tokens!r}")
    if num_regular_tokens < NUM_BYTE_TOKENS:
        raise ValueError(f"num_regular_tokens must be >= {NUM_BYTE_TOKENS} (the byte tokens), got {num_regular_tokens}")
    return num_regular_tokens


def _byte_alphabet() -> list[str]:
    """Printable stand-in character for each byte value 0..255 (the GPT-2/ByteLevel mapping).

    Bytes that are printable Latin-1 characters map to themselves; the remaining 68 bytes
    (controls, space, NBSP, soft hyphen) map, in byte order, to chr(256), chr(257), ...
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    printable_set = set(printable)
    alphabet: list[str] = []
    next_extra = 256
    for byte in range(NUM_BYTE_TOKENS):
        if byte in printable_set:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(next_extra))
            next_extra += 1
    return alphabet


def build_tokenizer(num_regular_tokens: int | None = None) -> PreTrainedTokenizerFast:
    """Build the offline byte-level tokenizer (see the module docstring for the id layout).

    Args:
        num_regular_tokens: id of the first special token. ``None`` -> 256 (no fillers; vocabulary
            of 261 tokens, used by the "tiny" preset). ``151643`` reproduces Qwen2's special ids
            (vocabulary of 151648 tokens).

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` (``TokenizersBackend`` in transformers 5) with
        ``eos_token='<|im_end|>'``, ``pad_token='<|endoftext|>'``, no bos token, ``padding_side='left'``,
        the LLaVA-OneVision :data:`CHAT_TEMPLATE`, and ``image_token`` / ``video_token`` (plus
        ``image_token_id`` / ``video_token_id``) attributes, which ``LlavaOnevisionProcessor`` reads.
        These attributes survive ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.

    Raises:
        ValueError: if ``num_regular_tokens`` is not an int >= 256.
    """
    # Lazy: presets import this module for its token constants on every command; the libraries load on a build.
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    first_special = _validated_regular_tokens(num_regular_tokens)

    vocab = {char: byte for byte, char in enumerate(_byte_alphabet())}
    # Fillers live in the BPE vocabulary (not as added tokens): cheap to build and never produced
    # from text because there are no merges.
    vocab.update({f"<|reserved_{idx}|>": idx for idx in range(NUM_BYTE_TOKENS, first_special)})

    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in SPECIAL_TOKENS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        image_token=IMAGE_TOKEN,
        video_token=VIDEO_TOKEN,
        padding_side="left",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )

    expected = special_token_ids(num_regular_tokens)
    actual = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    if actual != expected:  # pragma: no cover - guards against tokenizers/transformers behaviour changes
        raise RuntimeError(f"special token ids {actual} differ from the expected layout {expected}")
    return tokenizer
