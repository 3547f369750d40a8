"""EarlyTom on Hugging Face transformers' ``LlavaOnevisionForConditionalGeneration``.

This module knows transformers, not lmms-eval. It does not fork the model file: it drives the
model's own modules (SigLIP embeddings and encoder layers, projector, pooling, input embeddings,
``generate``) and only changes what EarlyTom changes:

1. the SigLIP encoder layers run one by one (SDPA, frames are the batch dimension); after the layers
   the method names, the frames may be merged, so later layers run on fewer frames;
2. the received attention is computed at one layer only, from that layer's queries and keys;
3. after projector and pooling, the method selects the tokens; ONE ``image_newline`` token follows;
4. the variable-length visual tokens replace the video placeholder inside the chat prompt, and the
   model's ``generate`` runs greedily on the resulting ``inputs_embeds``.

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

from ..compression import SpatialSelection, VideoCompressor, build_compressor
from ..compression.config import CompressionConfig, ConfigError, load_config
from ..compression.temporal import compose_sources
from ..dtypes import resolve_dtype
from ..timing import StageTimer
from . import llm
from .checkpoint import check_checkpoint
from .llm import InnerMerge

__all__ = ["EarlyTomLlavaOnevision", "GenerationOutput", "VideoEncoding", "load_model", "received_attention"]

Segment = tuple[int, int]
# Bytes of float32 attention probabilities materialised at once when computing the received attention.
_ATTENTION_CHUNK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class VideoEncoding:
    """The visual tokens of one video and how they came to be.

    Attributes:
        tokens: ``[N, D_llm]`` tokens sent to the LLM, the ``image_newline`` token last.
        frames_in: T0, frames that entered the encoder.
        frames_per_layer: frames each encoder layer processed (one entry per layer that ran).
        segments: final segments as ``(start, end)`` post-merge frame indices (None for ``full``).
        frame_sources: for each frame leaving the encoder, the input frames merged into it.
        selection: the spatial selection (per-frame kept token indices, roles, rho').
        offset: where the tokens start in their (unpadded) prompt, once spliced in; -1 before.
    """

    tokens: torch.Tensor
    frames_in: int
    frames_per_layer: tuple[int, ...]
    segments: tuple[Segment, ...] | None
    frame_sources: tuple[tuple[int, ...], ...]
    selection: SpatialSelection
    offset: int = -1

    @property
    def visual_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def rho_eff(self) -> float:
        return self.selection.rho_eff

    @property
    def frames_out(self) -> int:
        return len(self.selection.kept)


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


def received_attention(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Attention each token receives in a SigLIP encoder layer: softmax(QK^T) averaged over heads and queries.

    Only this layer's queries and keys are recomputed (from ``layer_norm1`` and ``q_proj``/``k_proj``);
    the probabilities are materialised a few frames at a time and reduced at once.

    Args:
        layer: a ``SiglipEncoderLayer``.
        hidden: ``[T, S, D]`` the layer's input.
    Returns:
        ``[T, S]`` float32.
    """
    attn = layer.self_attn
    num_frames, num_tokens, _ = hidden.shape
    heads = attn.num_heads
    x = layer.layer_norm1(hidden)
    queries = attn.q_proj(x).view(num_frames, num_tokens, heads, -1).transpose(1, 2)
    keys = attn.k_proj(x).view(num_frames, num_tokens, heads, -1).transpose(1, 2)
    chunk = max(1, _ATTENTION_CHUNK_BYTES // (4 * heads * num_tokens * num_tokens))
    out = []
    for start in range(0, num_frames, chunk):
        q = queries[start : start + chunk].float() * attn.scale
        k = keys[start : start + chunk].float()
        probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # [t, H, S, S]
        out.append(probs.mean(dim=(1, 2)))
    return torch.cat(out)


class EarlyTomLlavaOnevision:
    """A LLaVA-OneVision model and processor with a compression method applied to its videos.

    Args:
        model: ``LlavaOnevisionForConditionalGeneration`` (eval mode).
        processor: its ``LlavaOnevisionProcessor``.
        config: the compression config (validated against the encoder's depth here).
    """

    def __init__(self, model: Any, processor: Any, config: CompressionConfig):
        self.model = model
        self.processor = processor
        self.config = config
        hf_config = model.config
        if self.config.compresses:
            _check_supported(hf_config)
        self.num_layers_run = _feature_layer_depth(hf_config)
        self.config.check_encoder_depth(self.num_layers_run)
        self.config.check_llm_depth(hf_config.text_config.num_hidden_layers)
        self.compressor: VideoCompressor = build_compressor(self.config)
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
        """The same weights with another compression config (nothing is reloaded)."""
        return EarlyTomLlavaOnevision(self.model, self.processor, config)

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
        timer = timer or _NULL_TIMER
        hf = self.model.model
        vision = getattr(hf.vision_tower, "vision_model", hf.vision_tower)  # transformers 4.x nests it
        layers = vision.encoder.layers[: self.num_layers_run]
        plan = self.compressor.encoder_plan(self.num_layers_run)
        hooks = set(plan.hook_layers)
        frames_in = int(pixel_values.shape[0])

        with timer.stage("vision_encoder"):
            hidden = vision.embeddings(pixel_values.to(self.device, self.dtype))
        attention = None
        segments = None
        sources = tuple((frame,) for frame in range(frames_in))
        frames_per_layer = []
        # Runs of consecutive layers between the method's hooks are timed as one stage, so the device
        # is synchronised only around the hooks.
        cuts = {0, len(layers)} | {layer + 1 for layer in hooks}
        if plan.attention_layer is not None:
            cuts.add(plan.attention_layer)
        bounds = sorted(cuts)
        for start, stop in zip(bounds, bounds[1:]):
            if start == plan.attention_layer:
                with timer.stage("compression"):
                    attention = received_attention(layers[start], hidden)
            with timer.stage("vision_encoder"):
                for index in range(start, stop):
                    frames_per_layer.append(int(hidden.shape[0]))
                    hidden = _layer_output(layers[index](hidden, None))
            if stop - 1 in hooks:
                with timer.stage("compression"):
                    outcome = self.compressor.after_layer(stop - 1, hidden, attention)
                hidden, attention = outcome.hidden, outcome.attention
                if outcome.segments is not None:
                    segments = outcome.segments
                if outcome.plan is not None:
                    sources = compose_sources(sources, outcome.plan)

        with timer.stage("projector_pooling"):
            features = hf.apply_pooling(hf.multi_modal_projector(hidden))  # [T', S, D_llm]
            pooled_attention = self._pool_attention(attention) if attention is not None else None
        with timer.stage("compression"):
            selection = self.compressor.select(features, pooled_attention, segments, frames_in)
            newline = hf.image_newline[None].to(selection.tokens.dtype)
            tokens = torch.cat([selection.tokens, newline])
        return VideoEncoding(tokens, frames_in, tuple(frames_per_layer), segments, sources, selection)

    def _pool_attention(self, attention: torch.Tensor) -> torch.Tensor:
        """``[T, S_v]`` -> ``[T, S]`` with the bilinear pooling the model applies to features."""
        frames = attention.shape[0]
        grid = attention.view(frames, 1, self.grid, self.grid)
        size = [math.ceil(self.grid / 2)] * 2
        return torch.nn.functional.interpolate(grid, size=size, mode="bilinear").view(frames, -1)

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
            ``[B, L, D]`` (left-padded), ``attention_mask`` ``[B, L]`` and any image inputs.
        """
        timer = timer or _NULL_TIMER
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
        encodings: list[list[VideoEncoding]] = []
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
            row_encodings = []
            pieces = []
            id_pieces = []
            previous = 0
            offset = 0
            for place, video in zip(places, prompt_videos):
                with timer.stage("preprocess"):
                    pixel_values = self.preprocess_video(video)
                pieces.append(embed(ids[previous:place]))
                id_pieces.append(ids[previous:place])
                offset += place - previous
                encoding = dataclasses.replace(self.encode_video(pixel_values, timer=timer), offset=offset)
                row_encodings.append(encoding)
                pieces.append(encoding.tokens.to(pieces[-1].dtype))
                id_pieces.append(ids.new_full((encoding.visual_tokens,), self.video_token_id))
                offset += encoding.visual_tokens
                previous = place + 1
            pieces.append(embed(ids[previous:]))
            id_pieces.append(ids[previous:])
            rows.append(torch.cat(pieces))
            row_ids.append(torch.cat(id_pieces))
            encodings.append(row_encodings)

        lengths = [int(row.shape[0]) for row in rows]
        longest = max(lengths)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((batch, longest), pad_id, dtype=torch.long, device=self.device)
        inputs_embeds = embed(input_ids)
        attention_mask = torch.zeros(batch, longest, dtype=torch.long, device=self.device)
        for b, (row, ids) in enumerate(zip(rows, row_ids)):  # left padding, as transformers' generation expects
            inputs_embeds[b, longest - row.shape[0] :] = row
            input_ids[b, longest - row.shape[0] :] = ids
            attention_mask[b, longest - row.shape[0] :] = 1
        if flat_images:
            inputs_embeds = self._scatter_image_features(text_inputs, input_ids, inputs_embeds)
        return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}, encodings, lengths

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

        With stage 3 on (``config.inner_layer``), the video tokens are merged before layer k; that needs
        the batch's ``encodings`` (from :meth:`prepare_inputs`) to locate them. Timer stages:
        ``llm_prefill``, ``inner_merge`` (stage 3) and ``first_token``.
        """
        timer = timer or _NULL_TIMER
        embeds, mask = model_inputs["inputs_embeds"], model_inputs["attention_mask"]
        inner = None
        visual_mask = None
        if self.config.merges_in_llm:
            if encodings is None:
                raise ValueError("stage 3 (inner_layer) needs the encodings returned by prepare_inputs")
            cfg = self.config
            inner = InnerMerge(cfg.inner_layer, cfg.inner_ratio, cfg.inner_merge)
            visual_mask = visual_token_mask(mask, encodings)
        state = llm.prefill(self.model, embeds, mask, visual_mask=visual_mask, inner=inner, timer=timer)
        with timer.stage("first_token"):
            first = state.logits.argmax(dim=-1)
        return Prefill(first, state)

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
            step_logits = llm.decode_step(self.model, state.llm, tokens)
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
    """

    first_tokens: torch.Tensor
    llm: llm.LlmState


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
    if cfg.compresses:
        _check_supported(hf_config)
    cfg.check_encoder_depth(_feature_layer_depth(hf_config))
    cfg.check_llm_depth(hf_config.text_config.num_hidden_layers)

    check_checkpoint(pretrained)  # config checks first, then the weight files: present and whole
    torch_dtype = dtype if dtype is None or dtype == "auto" else resolve_dtype(dtype)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(pretrained), **kwargs)
    if device_map is None and device is not None:
        model = model.to(device)
    model.eval()
    processor = AutoProcessor.from_pretrained(str(pretrained))
    return EarlyTomLlavaOnevision(model, processor, cfg)


# ---------------------------------------------------------------------------------- helpers
class _NullTimer(StageTimer):
    """A timer that records nothing and never synchronises."""

    def stage(self, name: str):  # type: ignore[override]
        from contextlib import nullcontext

        return nullcontext()


_NULL_TIMER = _NullTimer()


def _layer_output(output: Any) -> torch.Tensor:
    """transformers 5 encoder layers return a tensor, 4.x a 1-tuple."""
    return output[0] if isinstance(output, tuple) else output


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
