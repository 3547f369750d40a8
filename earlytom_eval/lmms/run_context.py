"""What the lmms-eval model learns about the run that builds it: output folder, date stamp, model args, tasks.

lmms-eval builds the model inside ``simple_evaluate`` and passes it none of these; they decide where the
per-sample efficiency log goes and which tasks' data is checked before any weights load.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RunContext", "lmms_run_context", "lmms_task_type"]


@dataclass
class RunContext:
    """What the wrapper learns about the lmms-eval run that builds it."""

    found: bool = False
    output_path: str | None = None
    datetime_str: str | None = None
    model_args: str | None = None
    tasks: list[Any] | None = None
    task_manager: Any = None

    @property
    def date_id(self) -> str:
        stamp = self.datetime_str if isinstance(self.datetime_str, str) and self.datetime_str else None
        if stamp is None:
            stamp = time.strftime("%Y%m%d_%H%M%S")
            self.datetime_str = stamp
        return stamp.replace(":", "-")

    def model_folder(self, pretrained: str) -> str:
        """The sub-folder lmms-eval writes results into (its sanitised model name)."""
        try:  # lazy and guarded: these are lmms-eval internals that a later version may move
            from lmms_eval.loggers.evaluation_tracker import GeneralConfigTracker
            from lmms_eval.utils import sanitize_model_name

            name = GeneralConfigTracker._get_model_name(self.model_args) if isinstance(self.model_args, str) else ""
            return sanitize_model_name(name or pretrained)
        except Exception:  # a later lmms-eval moved them: same rule, by hand
            parts = (pretrained or "").split("/")
            return "__".join(parts[-2:]) if len(parts) > 1 else parts[-1]


def lmms_run_context() -> RunContext:
    """The run's output folder, date stamp, model args and tasks, read from lmms-eval's ``simple_evaluate``.

    lmms-eval builds the model inside ``simple_evaluate(... tasks, cli_args, datetime_str ...)`` and
    passes it none of these; its frame on the call stack has them (``--config`` files included). When it
    is not found (another caller), ``--output_path`` is read from ``sys.argv``.
    """
    frame = sys._getframe(1)
    try:
        while frame is not None:
            code = frame.f_code
            if code.co_name == "simple_evaluate" and "lmms_eval" in code.co_filename.replace("\\", "/"):
                values = frame.f_locals
                cli_args = values.get("cli_args")
                tracker = values.get("evaluation_tracker")
                output_path = getattr(cli_args, "output_path", None) or getattr(tracker, "output_path", None)
                tasks = values.get("tasks")
                return RunContext(
                    found=True,
                    output_path=output_path,
                    datetime_str=values.get("datetime_str"),
                    model_args=values.get("model_args") if isinstance(values.get("model_args"), str) else None,
                    tasks=list(tasks) if isinstance(tasks, (list, tuple)) else None,
                    task_manager=values.get("task_manager"),
                )
            frame = frame.f_back
    finally:
        del frame
    return RunContext(
        output_path=_argv_value(sys.argv, "--output_path"), model_args=_argv_value(sys.argv, "--model_args")
    )


def _argv_value(argv: Sequence[str], flag: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def lmms_task_type(default: str = "simple") -> str:
    """Whether lmms-eval is building tasks for a ``"simple"`` or a ``"chat"`` model.

    lmms-eval picks ``ConfigurableTask`` (simple models: ``(context, gen_kwargs, doc_to_visual, ...)``
    requests) or ``ConfigurableMessagesTask`` (chat models: ``(context, doc_to_messages, gen_kwargs, ...)``)
    from the model's ``is_simple``, but a task with its own ``class:`` is built without being told which;
    the ``task_type`` of ``TaskManager._load_individual_task_or_group`` on the call stack says it.
    ``default`` when the task is built some other way.
    """
    frame = sys._getframe(1)
    try:
        while frame is not None:
            code = frame.f_code
            if code.co_name == "_load_individual_task_or_group" and "lmms_eval" in code.co_filename.replace("\\", "/"):
                value = frame.f_locals.get("task_type")
                return value if value in ("simple", "chat") else default
            frame = frame.f_back
    finally:
        del frame
    return default
