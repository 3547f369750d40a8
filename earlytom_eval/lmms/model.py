"""The lmms-eval model ``earlytom_llava_ov``: thin glue between lmms-eval and :mod:`earlytom_eval.models.llava_ov`.

It turns ``--model_args`` into a compression config and a loaded model (checked before data or weights are
touched), answers ``generate_until`` requests greedily, and writes one efficiency-log line per document; the
README's "Evaluate with lmms-eval" describes the model args and the outputs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger
from PIL import Image
from tqdm import tqdm

from ..efficiency.memory import PeakMemory
from ..models.llava_ov import load_model
from ..models.presets import HUB_IDS
from ..stages import STAGES
from ..video import VideoLoadError, load_video
from .efficiency_log import EfficiencyLog, default_log_path
from .manifest import MODEL_ID
from .model_args import exit_on_bad_input, parse_model_args
from .run_context import lmms_run_context
from .task_check import check_tasks

__all__ = ["DEFAULT_PRETRAINED", "EarlyTomLlavaOV"]

DEFAULT_PRETRAINED = HUB_IDS["7b"]
_OFF = ("off", "none", "false", "no", "0")


class EarlyTomLlavaOV(lmms):
    """LLaVA-OneVision with a compression config, as an lmms-eval simple model."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = DEFAULT_PRETRAINED,
        config: str | None = None,
        max_frames_num: int | str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        device_map: str | None = None,
        video_backend: str = "auto",
        efficiency_log: str | None = None,
        warmup: int | str = 1,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        accelerator = Accelerator()
        self.accelerator = accelerator
        with exit_on_bad_input():  # bad input: its one line and exit status 2 (lmms-eval would exit 0)
            # 1. Arguments: everything is checked before data or weights are touched.
            args = parse_model_args(
                pretrained=pretrained, config=config, max_frames_num=max_frames_num, device=device, dtype=dtype,
                attn_implementation=attn_implementation, device_map=device_map, video_backend=video_backend,
                batch_size=batch_size, warmup=warmup, overrides=overrides, processes=accelerator.num_processes,
                local_index=accelerator.local_process_index,
            )
            self.config = args.config
            self.batch_size_per_gpu = args.batch_size
            self.video_backend = args.video_backend
            self.pretrained = args.pretrained
            self._warmup = args.warmup
            if accelerator.num_processes > 1:
                self._rank, self._world_size = accelerator.process_index, accelerator.num_processes

            # 2. The run's data, before any weights load (lmms-eval builds the model before it reads tasks).
            self._run = lmms_run_context()
            if self._run.tasks is not None and self._run.task_manager is not None:
                check_tasks(self._run.tasks, self._run.task_manager)

            # 3. The model (config.json is read and checked against the config before the weights load).
            self._et = load_model(
                self.pretrained,
                self.config,
                device=None if args.device_map is not None else args.device,
                dtype=args.dtype,
                attn_implementation=args.attn_implementation,
                device_map=args.device_map,
            )
        self._device = self._et.device
        cuda_devices = sorted({p.device for p in self._et.model.parameters() if p.device.type == "cuda"}, key=str)
        self._memory = PeakMemory(cuda_devices, reset_cpu=False)  # CPU: the process's high-water mark
        self._efficiency_arg = efficiency_log
        self._log: EfficiencyLog | None = None
        self._log_resolved = False
        logger.info(
            f"{MODEL_ID}: {self.pretrained} on {self._device}, config {self.config.name} "
            f"({self.config.method}, hash {self.config.fingerprint()}, {self.config.num_frames} frames)"
        )

    # ------------------------------------------------------------------------------ properties
    @property
    def model(self) -> Any:
        return self._et.model

    @property
    def earlytom(self) -> Any:
        """The :class:`earlytom_eval.models.llava_ov.EarlyTomLlavaOnevision` doing the work."""
        return self._et

    @property
    def tokenizer(self) -> Any:
        return self._et.tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ------------------------------------------------------------------------------ efficiency log
    def efficiency_log_path(self) -> Path | None:
        """Where this process's per-sample log goes (None when ``efficiency_log=off``).

        In order: the ``efficiency_log`` model arg (a ``.jsonl`` file, or a folder); else lmms-eval's
        output folder for this run, ``<output_path>/<model name as lmms-eval sanitises it>/``, with the
        run's own date prefix, i.e. ``<date>_efficiency.jsonl`` beside ``<date>_results.json`` and
        ``<date>_samples_<task>.jsonl``; else ``./earlytom_efficiency/<date>_efficiency.jsonl``.
        Several processes each write ``..._efficiency_rank<r>.jsonl``.
        """
        arg = self._efficiency_arg
        if arg is False or (isinstance(arg, str) and arg.strip().lower() in _OFF):
            return None
        date_id = self._run.date_id
        if arg not in (None, True, ""):
            path = Path(os.path.expanduser(str(arg)))
            if path.suffix == ".jsonl":
                if self.world_size > 1:
                    path = path.with_name(f"{path.stem}_rank{self.rank}.jsonl")
                return path
            return default_log_path(path, date_id, self.rank, self.world_size)
        if self._run.output_path:
            folder = Path(self._run.output_path) / self._run.model_folder(self.pretrained)
        else:
            folder = Path("earlytom_efficiency")
        return default_log_path(folder, date_id, self.rank, self.world_size)

    def _efficiency_log(self) -> EfficiencyLog | None:
        if not self._log_resolved:
            self._log_resolved = True
            path = self.efficiency_log_path()
            self._log = EfficiencyLog(path) if path is not None else None
            if path is not None and self.rank == 0:
                logger.info(f"{MODEL_ID}: per-sample efficiency log: {path}")
        return self._log

    def clean(self) -> None:
        if self._log is not None:
            self._log.close()
            logger.info(f"{MODEL_ID}: wrote {self._log.records} efficiency records to {self._log.path}")
        super().clean()

    # ------------------------------------------------------------------------------ requests
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            f"{MODEL_ID} does not implement loglikelihood (used by output_type loglikelihood / multiple_choice "
            "tasks); it answers generate_until tasks such as videomme, mlvu, earlytom_smoke"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            f"{MODEL_ID} does not implement generate_until_multi_round (multi-round tasks); "
            "it answers single-turn generate_until tasks"
        )

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Greedy answers, in request order; a document with bad data gets an empty answer and a log line."""
        settings = [_generation_settings(request.args[1], request.args[4]) for request in requests]
        self._warm_up()
        results: list[GenerationResult | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{MODEL_ID} responding")
        for batch in _batches(range(len(requests)), settings, self.batch_size_per_gpu):
            ready = []
            for index in batch:
                request = requests[index]
                if (request.metadata or {}).get("__padding_only__"):
                    results[index] = GenerationResult(text="")  # lmms-eval's rank padding: discarded
                    progress.update(1)
                    continue
                item = self._prepare(request)
                if item.error is not None:
                    results[index] = GenerationResult(text="")
                    self._record_error(item)
                    progress.update(1)
                    continue
                ready.append((index, item))
            if ready:
                max_new_tokens, until = settings[ready[0][0]]
                for (index, _), result in zip(ready, self._answer([item for _, item in ready], max_new_tokens, until)):
                    results[index] = result
                progress.update(len(ready))
        progress.close()
        return results  # type: ignore[return-value]

    def _warm_up(self) -> None:
        """``warmup`` untimed, unlogged generations on a noise video, so the first document's times are not
        the device's start-up (kernel selection, allocator growth)."""
        while self._warmup > 0:
            self._warmup -= 1
            noise = torch.randint(0, 256, (self.config.num_frames, 64, 64, 3), dtype=torch.uint8).numpy()
            prompt = self._et.build_prompt("Describe the video.", num_videos=1)
            self._et.generate([prompt], [[noise]], max_new_tokens=2)

    def _prepare(self, request: Instance) -> _Item:
        context, _, doc_to_visual, doc_id, task, split = request.args
        item = _Item(task=task, doc_id=doc_id, split=split, context=_strip_placeholders(context))
        try:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        except (Exception, SystemExit) as err:  # lmms-eval's own videomme/mlvu call sys.exit on a missing file
            item.error = f"doc_to_visual failed: {_one_line(err)}"
            return item
        for visual in _flatten(visuals):
            if isinstance(visual, (str, os.PathLike)):
                path = os.fspath(visual)
                item.videos.append(path)
                start = time.perf_counter()
                try:
                    frames = load_video(path, self.config.num_frames, backend=self.video_backend).frames
                except VideoLoadError as err:
                    item.error = str(err)
                    return item
                middle = time.perf_counter()
                try:
                    item.pixel_values.append(self._et.preprocess_video(frames))
                except Exception as err:
                    item.error = f"cannot preprocess video {path!r}: {_one_line(err)}"
                    return item
                item.video_load_ms += (middle - start) * 1000.0
                item.preprocess_ms += (time.perf_counter() - middle) * 1000.0
            elif _is_image(visual):
                item.images.append(visual)
            else:
                item.error = f"unsupported visual of type {type(visual).__name__} (allowed: video paths, PIL images)"
                return item
        return item

    def _answer(self, items: list[_Item], max_new_tokens: int, until: list[str]) -> list[GenerationResult]:
        prompts = [
            self._et.build_prompt(item.context, num_videos=len(item.pixel_values), num_images=len(item.images))
            for item in items
        ]
        self._memory.reset()
        start = time.perf_counter()
        outputs = self._et.generate(
            prompts,
            [item.pixel_values for item in items],
            [item.images for item in items] if any(item.images for item in items) else None,
            max_new_tokens=max_new_tokens,
            stop=until,
        )
        elapsed = time.perf_counter() - start
        peak = self._memory.peak()
        peak_mb = peak / 2**20 if peak is not None else None
        results = []
        for item, out in zip(items, outputs):
            generated = len(out.token_ids)
            stages = out.stages_ms
            encodings = out.videos
            record = {
                **self._record_base(item),
                "frames_in": sum(e.frames_in for e in encodings) if encodings else 0,
                "frames_per_layer": _sum_per_layer([e.frames_per_layer for e in encodings]),
                "frames_out": sum(e.frames_out for e in encodings) if encodings else 0,
                "rho_eff": encodings[0].rho_eff if len(encodings) == 1 else None,
                "visual_tokens": out.visual_tokens,
                "prompt_tokens": out.prompt_tokens,
                "llm_tokens_per_layer": list(out.llm_tokens_per_layer),
                "generated_tokens": generated,
                "video_load_ms": item.video_load_ms,
                "preprocess_ms": item.preprocess_ms + stages.get("preprocess", 0.0),
                **{f"{stage}_ms": stages.get(stage, 0.0) for stage in STAGES},
                "ttft_ms": stages.get("ttft", 0.0),
                "decode_ms": stages.get("decode", 0.0),
                "peak_memory_mb": peak_mb,
                "peak_memory_kind": self._memory.kind,
                "batch_size": len(items),
                "error": None,
            }
            log = self._efficiency_log()
            if log is not None:
                log.write(record)
            share = elapsed / len(items)
            log_metrics(
                total_elapsed_time=share,
                total_gen_tokens=generated,
                avg_speed=generated / share if share > 0 else 0.0,
                additional_metrics={
                    "num_requests": 1,
                    "ttft": record["ttft_ms"] / 1000.0,  # seconds, as lmms-eval's vLLM models report it
                    "vision_encoder_ms": record["vision_encoder_ms"],
                    "compression_ms": record["compression_ms"],
                    "llm_prefill_ms": record["llm_prefill_ms"],
                    "visual_tokens": record["visual_tokens"],
                    "prompt_tokens": record["prompt_tokens"],
                },
            )
            results.append(
                GenerationResult(
                    text=out.text, token_counts=TokenCounts(input_tokens=out.prompt_tokens, output_tokens=generated)
                )
            )
        return results

    def _record_base(self, item: _Item) -> dict[str, Any]:
        return {
            "task": item.task,
            "doc_id": item.doc_id,
            "split": item.split,
            "rank": self.rank,
            "model": self.pretrained,
            "method": self.config.method,
            "config": self.config.name,
            "config_hash": self.config.fingerprint(),
            "videos": item.videos,
        }

    def _record_error(self, item: _Item) -> None:
        logger.warning(f"{MODEL_ID}: {item.task} doc {item.doc_id}: {item.error}; answering '' (scored wrong)")
        log = self._efficiency_log()
        if log is not None:
            log.write({**self._record_base(item), "error": item.error, "batch_size": 1})


# ---------------------------------------------------------------------------------- helpers
@dataclass
class _Item:
    """One document on its way to the model."""

    task: str
    doc_id: int
    split: str
    context: str
    videos: list[str] = field(default_factory=list)
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    video_load_ms: float = 0.0
    preprocess_ms: float = 0.0
    error: str | None = None


def _generation_settings(gen_kwargs: Any, task: str) -> tuple[int, list[str]]:
    """``(max_new_tokens, until)`` of a request; sampling or beam search is refused (greedy only)."""
    kwargs = dict(gen_kwargs or {})
    until = kwargs.get("until")
    if until is None:
        until = []
    elif isinstance(until, str):
        until = [until]
    elif isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until):
        until = list(until)
    else:
        raise ValueError(f"{MODEL_ID}: task {task}: 'until' must be a string or a list of strings, got {until!r}")
    max_new_tokens = kwargs.get("max_new_tokens", 1024)
    try:
        max_new_tokens = int(max_new_tokens)
    except (TypeError, ValueError):
        max_new_tokens = 0
    if max_new_tokens < 1:
        raise ValueError(
            f"{MODEL_ID}: task {task}: max_new_tokens must be an integer >= 1, got {kwargs['max_new_tokens']!r}"
        )
    temperature = float(kwargs.get("temperature") or 0.0)
    do_sample = kwargs.get("do_sample")
    if temperature > 0 and do_sample is not False:
        raise ValueError(
            f"{MODEL_ID}: task {task} asks for sampling (temperature={temperature}); this model decodes greedily "
            "(allowed: temperature 0 or do_sample false; override with --gen_kwargs temperature=0)"
        )
    if int(kwargs.get("num_beams") or 1) > 1:
        raise ValueError(f"{MODEL_ID}: task {task} asks for num_beams={kwargs['num_beams']} (allowed: 1, greedy)")
    return max_new_tokens, [s for s in until if s]


def _batches(indices: Iterable[int], settings: list[tuple[int, list[str]]], size: int) -> Iterable[list[int]]:
    """Consecutive requests with the same generation settings, at most ``size`` at a time."""
    batch: list[int] = []
    for index in indices:
        if batch and (len(batch) >= size or settings[batch[0]] != settings[index]):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def _flatten(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if isinstance(visuals, (str, os.PathLike)) or _is_image(visuals):
        return [visuals]
    out = []
    for visual in visuals:
        out.extend(_flatten(visual) if isinstance(visual, (list, tuple)) else [visual])
    return out


def _is_image(value: Any) -> bool:
    return isinstance(value, Image.Image)


def _strip_placeholders(context: str) -> str:
    """The prompt gets its own ``<video>`` / ``<image>`` placeholders from the chat template."""
    if "<video>" not in context and "<image>" not in context:
        return context
    return context.replace("<video>", "").replace("<image>", "").strip()


def _sum_per_layer(schedules: list[tuple[int, ...]]) -> list[int]:
    if not schedules:
        return []
    depth = max(len(s) for s in schedules)
    return [sum(s[i] for s in schedules if i < len(s)) for i in range(depth)]


def _one_line(err: BaseException) -> str:
    text = str(err.code if isinstance(err, SystemExit) else err) or type(err).__name__
    return " ".join(text.split())
