"""EarlyTom on Hugging Face transformers' ``LlavaOnevisionForConditionalGeneration``.

This module knows transformers, not lmms-eval. It does not fork the model file: it drives the
model's own modules (SigLIP embeddings and encoder layers, projector, pooling, input embeddings,
``generate``) and only changes what EarlyTom changes:

1. the SigLIP encoder runs layer by layer with the method's encoder stage (:mod:`.encoder`);
2. after projector and pooling, the method selects the tokens; ONE ``image_newline`` token follows;
3. the variable-length visual tokens replace the video placeholder inside the chat prompt (with original
   position ids where the method keeps them);
4. the LLM runs layer by layer (:mod:`.llm`) with the method's cuts and decodes greedily.

With ``method: full`` the visual tokens, the prompt embeddings and therefore the logits are exactly
those of transformers' own forward on the same inputs (tested). Images and text-only prompts go
through transformers' own image path, uncompressed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..compression.config import CompressionConfig, ConfigError, ModelFacts, load_config
from ..compression.dycoke import stage2_image_length
from ..compression.methods import CompressionMethod
from ..compression.registry import build_method
from ..dtypes import resolve_dtype
from ..timing import StageTimer
from . import compat, llm
from .checkpoint import check_checkpoint
from .encoder import NULL_TIMER, VideoEncoding, encode_videos, received_attention

__all__ = [
    "EarlyTomLlavaOnevision",
    "GenerationOutput",
    "VideoEncoding",
    "load_model",
    "model_facts",
    "received_attention",
]


@dataclass
class GenerationOutput:
    """One prompt's answer and token budget."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    visual_tokens: int
    videos: list[VideoEncoding]
    stages_ms: dict[str, float] = field(default_factory=dict)
    #: Tokens each LLM layer processed in the prefill (fewer from layer k on with stage 3).
    llm_tokens_per_layer: tuple[int, ...] = ()


class EarlyTomLlavaOnevision:
    """A LLaVA-OneVision model and processor with a compression method applied to its videos.

    Args:
        model: ``LlavaOnevisionForConditionalGeneration`` (eval mode).
        processor: its ``LlavaOnevisionProcessor``.
        config: the compression config (validated against the encoder's depth here).
    """

    def __init__(
        self, model: Any, processor: Any, config: CompressionConfig, pooling_head: Any = None, pretrained: Any = None
    ):
        self.model = model
        self.processor = processor
        self.config = config
        hf_config = model.config
        self.method: CompressionMethod = checked_method(config, hf_config)
        self.num_layers_run = _feature_layer_depth(hf_config)
        #: SigLIP's attention-pooling head (FastVID), or None: ``[T, S_v, D_v]`` -> (probe, frame features).
        self.pooling_head = pooling_head
        #: The checkpoint folder or hub id the weights came from (None: built in memory): where a config that
        #: reads the pooling head finds it when the model was loaded for another config.
        self.pretrained = pretrained
        self.video_token_id = hf_config.video_token_id
        vision = hf_config.vision_config
        self.grid = vision.image_size // vision.patch_size

    # ------------------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.model.model.image_newline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.image_newline.dtype

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def with_config(self, config: CompressionConfig) -> EarlyTomLlavaOnevision:
        """The same weights with another compression config (nothing is reloaded but FastVID's pooling head,
        loaded from the checkpoint the first time a config needs it)."""
        head = self.pooling_head
        if head is None and config.method == "fastvid" and self.pretrained is not None:
            head = load_pooling_head(config, str(self.pretrained), self.model.config, self.dtype).to(self.device)
        return EarlyTomLlavaOnevision(self.model, self.processor, config, head, self.pretrained)

    # ------------------------------------------------------------------------------ video path
    def preprocess_video(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames ``[T, H, W, 3]`` uint8 -> pixel values ``[T, 3, size, size]`` via the processor.

        A float tensor ``[T, 3, size, size]`` is taken as already preprocessed.
        """
        if (
            isinstance(frames, torch.Tensor)
            and frames.is_floating_point()
            and frames.dim() == 4
            and frames.shape[1] == 3
        ):
            return frames
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
            raise ValueError(f"a video must be frames [T, H, W, 3] with T >= 1, got shape {tuple(frames.shape)}")
        out = self.processor.video_processor(videos=[frames], return_tensors="pt")
        return out["pixel_values_videos"][0]

    @torch.inference_mode()
    def encode_video(self, pixel_values: torch.Tensor, timer: StageTimer | None = None) -> VideoEncoding:
        """Run the vision encoder with the compression method, then projector, pooling and selection.

        Args:
            pixel_values: ``[T, 3, H, W]`` one video's preprocessed frames.
            timer: optional; records ``vision_encoder``, ``compression`` and ``projector_pooling`` ms.
        Returns:
            The video's visual tokens ``[N, D_llm]`` (newline last) with the frame schedule.
        """
        return self.encode_videos([pixel_values], timer=timer)[0]

    @torch.inference_mode()
    def encode_videos(self, videos: Sequence[torch.Tensor], timer: StageTimer | None = None) -> list[VideoEncoding]:
        """Several videos' ``[T_i, 3, H, W]`` pixel values through the encoder together (see
        :func:`.encoder.encode_videos`: frames of all videos share each layer call, each video gets its own
        compression); one :class:`VideoEncoding` per video, as each would get alone."""
        if not videos:
            return []
        return encode_videos(
            self.model.model,
            self.method,
            [v.to(self.device, self.dtype) for v in videos],
            self.num_layers_run,
            pooling_head=self.pooling_head,
            timer=timer,
        )

    # ------------------------------------------------------------------------------ prompts
    def build_prompt(self, question: str, num_videos: int = 1, num_images: int = 0) -> str:
        """A one-turn chat prompt: placeholders for the images and videos, then the question."""
        content = [{"type": "image"}] * num_images + [{"type": "video"}] * num_videos
        content = content + [{"type": "text", "text": question}]
        conversation = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    @torch.inference_mode()
    def prepare_inputs(
        self,
        prompts: Sequence[str],
        videos: Sequence[Sequence[Any]] | None = None,
        images: Sequence[Sequence[Any]] | None = None,
        timer: StageTimer | None = None,
    ) -> tuple[dict[str, Any], list[list[VideoEncoding]], list[int]]:
        """Token embeddings of a batch of prompts with each video's compressed tokens spliced in.

        Args:
            prompts: chat-formatted strings; each ``<video>`` placeholder (one token) takes the next video
                of that prompt, and expands to that video's own number of visual tokens.
            videos: per prompt, a list of videos (frames ``[T, H, W, 3]`` uint8 or pixel values ``[T, 3, H, W]``).
            images: per prompt, a list of images (PIL or arrays), handled by transformers, uncompressed.
        Returns:
            ``(model_inputs, encodings, prompt_lengths)``: ``model_inputs`` has ``inputs_embeds``
            ``[B, L, D]`` (left-padded), ``attention_mask`` ``[B, L]``, ``position_ids`` ``[B, L]`` when a
            method keeps original positions (gaps), and any image inputs.
        """
        timer = timer or NULL_TIMER
        batch = len(prompts)
        videos = list(videos) if videos is not None else [[] for _ in prompts]
        images = list(images) if images is not None else [[] for _ in prompts]
        if len(videos) != batch or len(images) != batch:
            raise ValueError(f"got {batch} prompts but {len(videos)} video lists and {len(images)} image lists")
        flat_images = [image for per_prompt in images for image in per_prompt]
        text_inputs = self._tokenize(list(prompts), flat_images)
        embed = self.model.get_input_embeddings()
        rows: list[torch.Tensor] = []
        row_ids: list[torch.Tensor] = []
        row_positions: list[torch.Tensor] = []
        encodings: list[list[VideoEncoding]] = []
        all_ids, all_places = [], []
        for index, (ids, mask, prompt_videos) in enumerate(
            zip(text_inputs["input_ids"], text_inputs["attention_mask"], videos)
        ):
            ids = ids[mask.bool()].to(self.device)
            places = (ids == self.video_token_id).nonzero().squeeze(1).tolist()
            if len(places) != len(prompt_videos):
                raise ValueError(
                    f"prompt {index} has {len(places)} video placeholder(s) "
                    f"but {len(prompt_videos)} video(s) were given"
                )
            all_ids.append(ids)
            all_places.append(places)
        with timer.stage("preprocess"):
            pixel_values = [self.preprocess_video(video) for prompt_videos in videos for video in prompt_videos]
        encoded = iter(self.encode_videos(pixel_values, timer=timer))  # every video of the batch at once
        for ids, places in zip(all_ids, all_places):
            row_encodings = []
            pieces = []
            id_pieces = []
            previous = 0
            offset = 0
            position_pieces = []
            next_position = 0
            for place in places:
                pieces.append(embed(ids[previous:place]))
                id_pieces.append(ids[previous:place])
                position_pieces.append(torch.arange(place - previous, device=self.device) + next_position)
                next_position += place - previous
                offset += place - previous
                encoding = dataclasses.replace(next(encoded), offset=offset)
                row_encodings.append(encoding)
                pieces.append(encoding.tokens.to(pieces[-1].dtype))
                id_pieces.append(ids.new_full((encoding.visual_tokens,), self.video_token_id))
                if encoding.positions is None:
                    position_pieces.append(torch.arange(encoding.visual_tokens, device=self.device) + next_position)
                else:
                    position_pieces.append(encoding.positions.to(self.device) + next_position)
                next_position += encoding.span
                offset += encoding.visual_tokens
                previous = place + 1
            pieces.append(embed(ids[previous:]))
            id_pieces.append(ids[previous:])
            position_pieces.append(torch.arange(len(ids) - previous, device=self.device) + next_position)
            rows.append(torch.cat(pieces))
            row_ids.append(torch.cat(id_pieces))
            row_positions.append(torch.cat(position_pieces))
            encodings.append(row_encodings)

        lengths = [int(row.shape[0]) for row in rows]
        longest = max(lengths)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((batch, longest), pad_id, dtype=torch.long, device=self.device)
        inputs_embeds = embed(input_ids)
        attention_mask = torch.zeros(batch, longest, dtype=torch.long, device=self.device)
        position_ids = torch.zeros(batch, longest, dtype=torch.long, device=self.device)
        for b, (row, ids, pos) in enumerate(zip(rows, row_ids, row_positions)):  # left padding, as generate expects
            inputs_embeds[b, longest - row.shape[0] :] = row
            input_ids[b, longest - row.shape[0] :] = ids
            attention_mask[b, longest - row.shape[0] :] = 1
            position_ids[b, longest - row.shape[0] :] = pos
        if flat_images:
            inputs_embeds = self._scatter_image_features(text_inputs, input_ids, inputs_embeds)
        model_inputs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        if any(e.positions is not None for row_encodings in encodings for e in row_encodings):
            model_inputs["position_ids"] = position_ids
        return model_inputs, encodings, lengths

    def _scatter_image_features(self, text_inputs: Any, input_ids: torch.Tensor, inputs_embeds: torch.Tensor):
        """Put transformers' own (uncompressed, anyres) image features at the image placeholders, as its forward."""
        hf = self.model.model
        kwargs = {"batch_num_images": text_inputs["batch_num_images"]} if "batch_num_images" in text_inputs else {}
        outputs = hf.get_image_features(
            text_inputs["pixel_values"].to(self.device, self.dtype),
            text_inputs["image_sizes"].to(self.device),
            return_dict=True,
            **kwargs,
        )
        features = torch.cat(outputs.pooler_output, dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
        image_mask = (input_ids == self.model.config.image_token_id).unsqueeze(-1)
        return inputs_embeds.masked_scatter(image_mask, features)

    def _tokenize(self, prompts: list[str], images: list[Any]) -> Any:
        """Token ids with every video placeholder left as ONE token (we expand it per video's budget).

        Images are expanded by transformers' processor (its anyres token count). The processor refuses
        video placeholders without videos, so a shallow copy with its video check switched off is used.
        """
        if not images:
            return self.tokenizer(prompts, padding=True, return_tensors="pt")
        processor = copy.copy(self.processor)
        processor.video_token = None
        return processor(text=prompts, images=images, padding=True, return_tensors="pt")

    @torch.inference_mode()
    def prefill(
        self,
        model_inputs: dict[str, Any],
        timer: StageTimer | None = None,
        encodings: Sequence[Sequence[VideoEncoding]] | None = None,
    ) -> Prefill:
        """Run the LLM over the prompts (cache kept) and pick each prompt's first token greedily.

        With LLM cuts (EarlyTom's stage 3, HoliTom's inner stage, FastV), the video tokens are cut before the
        method's layers; that needs the batch's ``encodings`` (from :meth:`prepare_inputs`) to locate them.
        Timer stages: ``llm_prefill``, ``inner_merge`` (the cuts) and ``first_token``.
        """
        timer = timer or NULL_TIMER
        embeds, mask = model_inputs["inputs_embeds"], model_inputs["attention_mask"]
        cuts = self.method.llm_cuts()
        visual_mask = None
        if cuts:
            if encodings is None:
                raise ValueError(f"the LLM cuts of '{self.method.name}' need the encodings returned by prepare_inputs")
            visual_mask = visual_token_mask(mask, encodings)
        state = llm.prefill(
            self.model,
            embeds,
            mask,
            visual_mask=visual_mask,
            cuts=cuts,
            positions=model_inputs.get("position_ids"),
            timer=timer,
        )
        with timer.stage("first_token"):
            first = state.logits.argmax(dim=-1)
        return Prefill(first, state, self._decode_pruner(mask, encodings))

    def _decode_pruner(
        self, attention_mask: torch.Tensor, encodings: Sequence[Sequence[VideoEncoding]] | None
    ) -> llm.DecodePruner | None:
        """The method's decode-time cache pruning for this batch (DyCoke), or None: each row's image span is its
        first video's tokens (one video per prompt in the reference), without the newline and the last token."""
        settings = self.method.decode_pruning()
        if settings is None:
            return None
        if encodings is None:
            raise ValueError(f"decode pruning of '{self.method.name}' needs the encodings returned by prepare_inputs")
        pad = attention_mask.shape[1] - attention_mask.sum(-1)
        starts = [int(p) + (row[0].offset if row else 0) for p, row in zip(pad.tolist(), encodings)]
        lengths = [stage2_image_length(row[0].visual_tokens - 1) if row else 0 for row in encodings]
        device = attention_mask.device
        return llm.DecodePruner(settings, torch.tensor(starts, device=device), torch.tensor(lengths, device=device))

    @torch.inference_mode()
    def decode(
        self, state: Prefill, max_new_tokens: int, stop: Sequence[str] = (), output_logits: bool = False
    ) -> list[list[int]] | tuple[list[list[int]], list[torch.Tensor]]:
        """Greedy decoding from a prefill: ``max_new_tokens`` tokens at most (the first one included).

        A row ends at an end-of-sequence token or once its text contains a ``stop`` string; finished rows
        are fed padding, as transformers' ``generate`` does. Returns the new token ids per row, EOS
        included (and, with ``output_logits``, the ``[B, V]`` logits of every step, the prefill's first).
        """
        eos = torch.tensor(sorted(_eos_ids(self.model.generation_config)), device=self.device, dtype=torch.long)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        tokens = state.first_tokens
        finished = torch.isin(tokens, eos)
        generated = [tokens]
        logits = [state.llm.logits]
        for _ in range(max_new_tokens - 1):
            finished |= self._hit_stop(generated, stop)
            if bool(finished.all()):
                break
            step_logits = llm.decode_step(self.model, state.llm, tokens, state.pruner)
            tokens = step_logits.argmax(dim=-1).masked_fill(finished, pad)
            finished |= torch.isin(tokens, eos)
            generated.append(tokens)
            logits.append(step_logits)
        rows = torch.stack(generated, dim=1).tolist()
        ended = [self._trim(row, eos.tolist(), pad) for row in rows]
        return (ended, logits) if output_logits else ended

    def _hit_stop(self, generated: list[torch.Tensor], stop: Sequence[str]) -> torch.Tensor:
        hit = torch.zeros(generated[0].shape[0], dtype=torch.bool, device=generated[0].device)
        if not stop:
            return hit
        rows = torch.stack(generated, dim=1).tolist()
        for index, row in enumerate(rows):
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            hit[index] = any(s in text for s in stop)
        return hit

    @staticmethod
    def _trim(row: list[int], eos: list[int], pad: int) -> list[int]:
        """Drop the padding fed to a finished row (keep its EOS token)."""
        for index, token in enumerate(row):
            if token in eos:
                return row[: index + 1]
        while row and row[-1] == pad:
            row = row[:-1]
        return row

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        videos: Sequence[Sequence[Any]] | None = None,
        images: Sequence[Sequence[Any]] | None = None,
        *,
        max_new_tokens: int = 64,
        stop: Sequence[str] | None = None,
        profile_stages: bool = True,
    ) -> list[GenerationOutput]:
        """Greedy generation for a batch of prompts (each video gets its own token budget).

        ``stop`` strings end generation (and are cut from the returned text), like lmms-eval's ``until``.
        Timing: ``ttft`` runs from the preprocessed frames to the first token (decoding and preprocessing
        excluded, as in the reference); with ``profile_stages`` the device is also synchronised around
        each stage for the breakdown (``vision_encoder``, ``compression``, ``projector_pooling``,
        ``llm_prefill``, ``first_token``, ``decode``).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        stop = [s for s in (stop or []) if s]
        timer = StageTimer(self.device)
        stage_timer = timer if profile_stages else None
        with timer.stage("preprocess"):
            pixel_videos = [[self.preprocess_video(v) for v in per_prompt] for per_prompt in (videos or [])] or None
        with timer.stage("ttft"):
            model_inputs, encodings, lengths = self.prepare_inputs(prompts, pixel_videos, images, timer=stage_timer)
            state = self.prefill(model_inputs, timer=stage_timer, encodings=encodings)
        with timer.stage("decode"):
            rows = self.decode(state, max_new_tokens, stop)
        outputs = []
        eos = _eos_ids(self.model.generation_config)
        for ids, row_encodings, length, per_layer in zip(rows, encodings, lengths, state.llm.tokens_per_layer):
            content = [t for t in ids if t not in eos]
            text = _cut_at_stop(self.tokenizer.decode(content, skip_special_tokens=True), stop)
            outputs.append(
                GenerationOutput(
                    text=text,
                    token_ids=ids,
                    prompt_tokens=length,
                    visual_tokens=sum(e.visual_tokens for e in row_encodings),
                    videos=row_encodings,
                    stages_ms=dict(timer.ms),
                    llm_tokens_per_layer=per_layer,
                )
            )
        return outputs


@dataclass
class Prefill:
    """State after the LLM prefill of a batch.

    Attributes:
        first_tokens: ``[B]`` greedy first token of each prompt.
        llm: the LLM state (KV cache, per-layer-group masks, positions, stage-3 decisions, tokens per layer).
        pruner: the method's decode-time cache pruning, or None.
    """

    first_tokens: torch.Tensor
    llm: llm.LlmState
    #: DyCoke's stage 2 for this batch (fresh per prefill, i.e. per ``generate`` call), or None.
    pruner: llm.DecodePruner | None = None


def visual_token_mask(attention_mask: torch.Tensor, encodings: Sequence[Sequence[VideoEncoding]]) -> torch.Tensor:
    """``[B, L]`` bool: the positions of the video tokens (newline included) in a left-padded batch."""
    mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    length = attention_mask.shape[1]
    for b, (row, row_encodings) in enumerate(zip(attention_mask, encodings)):
        pad = length - int(row.sum())
        for encoding in row_encodings:
            if encoding.offset < 0:
                raise ValueError("video encodings must come from prepare_inputs (their offset is unknown)")
            start = pad + encoding.offset
            mask[b, start : start + encoding.visual_tokens] = True
    return mask


def load_model(
    pretrained: str | Path,
    config: CompressionConfig | str | Path | dict | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    device_map: str | dict | None = None,
    **overrides: Any,
) -> EarlyTomLlavaOnevision:
    """Load LLaVA-OneVision (hub id or local directory) with a compression config.

    The config (object, YAML path or mapping, plus keyword overrides) is validated against the
    checkpoint's ``config.json`` before any weights load.

    Example::

        model = load_model("llava-hf/llava-onevision-qwen2-7b-ov-hf", config=CompressionConfig(retention=0.1))
    """
    from transformers import AutoConfig, AutoProcessor, LlavaOnevisionForConditionalGeneration

    cfg = load_config(config, **overrides)
    check_checkpoint(pretrained, weights=False)  # a bad local folder: one line, not a transformers traceback
    hf_config = AutoConfig.from_pretrained(str(pretrained))
    checked_method(cfg, hf_config)  # every config error before any weights load

    check_checkpoint(pretrained)  # config checks first, then the weight files: present and whole
    torch_dtype = dtype if dtype is None or dtype == "auto" else resolve_dtype(dtype)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    kwargs.update(compat.dtype_kwargs(torch_dtype))  # dtype= or, before transformers 4.56, torch_dtype=
    if device_map is not None:
        kwargs["device_map"] = device_map
    pooling_head = load_pooling_head(cfg, str(pretrained), hf_config, torch_dtype) if cfg.method == "fastvid" else None
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(pretrained), **kwargs)
    if device_map is None and device is not None:
        model = model.to(device)
    model.eval()
    processor = AutoProcessor.from_pretrained(str(pretrained))
    if pooling_head is not None:
        pooling_head = pooling_head.to(model.device)
    return EarlyTomLlavaOnevision(model, processor, cfg, pooling_head, pretrained=pretrained)


def load_pooling_head(config: CompressionConfig, pretrained: str, hf_config: Any, dtype: Any) -> Any:
    """SigLIP's attention-pooling head for FastVID (see :mod:`.pooling_head`)."""
    from .pooling_head import load_pooling_head as load

    return load(config.params.head_weights, pretrained, hf_config.vision_config, dtype)


def model_facts(hf_config: Any) -> ModelFacts:
    """What a method's checks need from a LLaVA-OneVision ``config.json``."""
    vision = hf_config.vision_config
    grid = vision.image_size // vision.patch_size
    return ModelFacts(
        encoder_layers=_feature_layer_depth(hf_config),
        llm_layers=hf_config.text_config.num_hidden_layers,
        patch_grid=grid,
        pooled_grid=math.ceil(grid / 2),
    )


def checked_method(config: CompressionConfig, hf_config: Any) -> CompressionMethod:
    """The method of ``config``, checked against the model (one ConfigError line if it cannot run)."""
    if config.compresses:
        _check_supported(hf_config)
    method = build_method(config)
    method.check_model(model_facts(hf_config))
    return method


# ---------------------------------------------------------------------------------- helpers
def _feature_layer_depth(hf_config: Any) -> int:
    """How many encoder layers run to produce the features (``vision_feature_layer`` -1 -> all of them)."""
    depth = hf_config.vision_config.num_hidden_layers
    layer = hf_config.vision_feature_layer
    if not isinstance(layer, int):
        return depth  # multi-layer features: every layer runs (only 'full' supports this)
    return layer if layer >= 0 else depth + 1 + layer


def _check_supported(hf_config: Any) -> None:
    if not isinstance(hf_config.vision_feature_layer, int):
        raise ConfigError(
            f"compression needs a single vision_feature_layer, the checkpoint has {hf_config.vision_feature_layer!r}"
        )
    if hf_config.vision_feature_select_strategy != "full":
        raise ConfigError(
            "compression needs vision_feature_select_strategy 'full' (LLaVA-OneVision's), the checkpoint has "
            f"{hf_config.vision_feature_select_strategy!r}"
        )


def _eos_ids(generation_config: Any) -> set[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    for s in stop:
        index = text.find(s)
        if index != -1:
            text = text[:index]
    return text
