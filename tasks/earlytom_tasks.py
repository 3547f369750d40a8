"""Task code for the plugin's lmms-eval tasks (``--include_path tasks``).

``earlytom_videomme`` and ``earlytom_mlvu_dev`` are lmms-eval's ``videomme`` and ``mlvu_dev`` with the
same prompts, answer extraction and aggregation (imported from lmms-eval, not copied), but:

* the video root is an environment variable (``EARLYTOM_VIDEOMME_DIR``, ``EARLYTOM_MLVU_DIR``), by
  default lmms-eval's ``$HF_HOME/videomme`` and ``$HF_HOME/mlvu`` (``HF_HOME`` defaulting to
  ``~/.cache/huggingface``, where lmms-eval's MLVU looks in a relative ``./~/...`` folder instead);
* ``doc_to_visual`` never calls ``sys.exit``: a missing video comes back as its expected path, the model
  reports it for that one document and the run goes on;
* missing data stops the run before anything loads, with one message naming the folder
  (:class:`earlytom_eval.lmms.datasets.MissingDataError`), instead of an attempt to download it.

``earlytom_smoke`` is the offline smoke set written by ``earlytom-eval smoke-data``: VideoMME documents
scored by the very same functions as ``earlytom_videomme``.

Data locations live in :mod:`earlytom_eval.lmms.datasets`, shared with the model's pre-flight check.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.task import ConfigurableMessagesTask, ConfigurableTask
from lmms_eval.tasks.mlvu.utils import mlvu_aggregate_results_dev, mlvu_doc_to_text, mlvu_process_results
from lmms_eval.tasks.videomme.utils import (
    videomme_aggregate_results,
    videomme_doc_to_text,
    videomme_process_results,
)

from earlytom_eval.lmms.datasets import (
    DATASETS,
    MissingDataError,
    annotations_file,
    data_problem,
    data_root,
    downloads_allowed,
    find_video,
)
from earlytom_eval.lmms.run_context import lmms_task_type

TASKS_DIR = Path(__file__).resolve().parent

__all__ = [
    "EarlyTomVideoTask",
    "mlvu_aggregate_results_dev",
    "mlvu_dev_doc_to_visual",
    "mlvu_doc_to_text",
    "mlvu_process_results",
    "smoke_doc_to_visual",
    "videomme_aggregate_results",
    "videomme_doc_to_text",
    "videomme_doc_to_visual",
    "videomme_process_results",
]

_LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


class EarlyTomVideoTask(ConfigurableMessagesTask):
    """An lmms-eval task whose data location comes from :mod:`earlytom_eval.lmms.datasets`.

    The YAML names the dataset in ``metadata: {earlytom_data: videomme | mlvu_dev | earlytom_smoke}``.
    Requests follow the model: chat models (lmms-eval's default ``llava_hf``, ``qwen3_vl``, ...) get
    ``ConfigurableMessagesTask``'s ``doc_to_messages`` requests, simple models (ours, ``--force_simple``)
    ``ConfigurableTask``'s ``doc_to_visual`` ones, as lmms-eval's own YAML-only tasks do.
    """

    def __init__(self, *args: Any, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if config is not None:
            config = dict(config)
            config.pop("class", None)
        self.chat = lmms_task_type() == "chat"
        super().__init__(*args, config=config, **kwargs)

    def construct_requests(self, doc_id: int, ctx: str, **kwargs: Any) -> list[Instance] | Instance:
        if self.chat:
            return ConfigurableMessagesTask.construct_requests(self, doc_id, ctx, **kwargs)
        return ConfigurableTask.construct_requests(self, doc_id, ctx, **kwargs)

    def download(self, dataset_kwargs: dict[str, Any] | None = None) -> None:
        metadata = self.config.metadata if isinstance(self.config.metadata, dict) else {}
        key = metadata.get("earlytom_data")
        if key not in DATASETS:
            raise ValueError(
                f"task {self.config.task!r}: metadata.earlytom_data must be one of {', '.join(DATASETS)}, got {key!r}"
            )
        problem = data_problem(key, TASKS_DIR)
        if problem and (key == "earlytom_smoke" or not downloads_allowed()):
            raise MissingDataError(f"{self.config.task}: {problem}")
        kwargs = {k: v for k, v in (dataset_kwargs or {}).items() if k not in ("video", "cache_dir", "data_files")}
        annotations = annotations_file(key, TASKS_DIR)
        if annotations is not None:
            builder = _LOCAL_BUILDERS.get(annotations.suffix.lower())
            if builder is None:
                raise ValueError(
                    f"annotation file {annotations}: unsupported suffix (allowed: {', '.join(_LOCAL_BUILDERS)})"
                )
            self.DATASET_PATH = builder
            self.DATASET_NAME = None
            kwargs["data_files"] = {self.config.test_split: str(annotations)}
        else:
            # Hub annotations (cached by `datasets` after the first download); the videos stay in our root,
            # which lmms-eval leaves alone when it exists (and fills from the hub when downloads are allowed).
            kwargs.update(video=True, cache_dir=str(data_root(key, TASKS_DIR)))
        super().download(kwargs)


# ------------------------------------------------------------------------------------ visuals
def _videomme_video(root: Path, doc: dict[str, Any]) -> list[str]:
    return [find_video(root / "data", f"{doc['videoID']}.mp4")]


def videomme_doc_to_visual(doc: dict[str, Any]) -> list[str]:
    """``$EARLYTOM_VIDEOMME_DIR/data/<videoID>.mp4`` (or .MP4 / .mkv); never exits."""
    return _videomme_video(data_root("videomme", TASKS_DIR), doc)


def smoke_doc_to_visual(doc: dict[str, Any]) -> list[str]:
    """``$EARLYTOM_SMOKE_DIR/data/<videoID>.mp4``: the smoke set uses VideoMME's layout."""
    return _videomme_video(data_root("earlytom_smoke", TASKS_DIR), doc)


def mlvu_dev_doc_to_visual(doc: dict[str, Any]) -> list[str]:
    """``$EARLYTOM_MLVU_DIR/<video_name>``; never exits."""
    return [find_video(data_root("mlvu_dev", TASKS_DIR), os.fspath(doc["video_name"]))]
