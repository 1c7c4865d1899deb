"""Which MTV a task's queries get: the explicit artifact, the cached one, or a new build.

A wrapper in an activation mode (mtv, or a baseline of `mtv_eval.methods.registry`) and
`mtv-eval extract` both ask `MTVProvider.for_task`, so an artifact built once is reused by
every later run with the same key (`mtv_eval.harness.cache`), and the record of where each
task's artifact came from is kept in one place. `apply` is the one place a wrapper gets
the edit to run generation under.

With several processes every rank asks for every task in the same order (the wrapper
agrees on the task list first): the MTV is built once, by all ranks together, written
by rank 0 only, and every rank uses rank 0's tensors (`mtv_eval.harness.cache`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from mtv_eval.harness.cache import MTVKey, get_or_build, support_fingerprint, weights_fingerprint
from mtv_eval.harness.distributed import Ranks
from mtv_eval.harness.settings import RunSettings
from mtv_eval.methods.artifact import MTV, ArtifactError
from mtv_eval.methods.mtv import model_identity
from mtv_eval.toy import resolve_pretrained


class MTVProvider:
    """MTVs by task for one model.

    Args:
        adapter: the model's adapter (model, processor, template, head sites).
        cache_dir: the MTV cache folder.
        revision: the model revision the user asked for (part of the cache key).
        mtv_path: an explicit artifact to use instead of building (checked against the model now).
        progress: show progress bars while building.
        log: one-line messages (loaded / building / saved).
        ranks: the processes of a multi-process run (None: this process alone).
    """

    def __init__(
        self,
        adapter: Any,
        cache_dir: str,
        revision: str | None = None,
        mtv_path: str | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        ranks: Ranks | None = None,
    ) -> None:
        self.adapter, self.cache_dir, self.revision = adapter, cache_dir, revision
        self.ranks = ranks or Ranks()
        self.progress, self.log = progress, log
        self.records: dict[str, dict[str, Any]] = {}
        self._mtvs: dict[str, MTV] = {}
        self._explicit: MTV | None = None
        self._explicit_path = mtv_path
        if mtv_path:
            self._explicit = MTV.load(mtv_path)
            name, _ = model_identity(adapter.model)
            self._explicit.check_compatible(name, adapter.sites.shape, adapter.sites.model_type, self.weights)

    @functools.cached_property
    def weights(self) -> str | None:
        """The weights fingerprint of a local checkpoint (None for a hub model: its revision names it).

        A local checkpoint is named only by its path; the fingerprint tells a replaced one apart.
        """
        name, _ = model_identity(self.adapter.model)
        return weights_fingerprint(resolve_pretrained(name))

    def get(self, task: str) -> MTV:
        """The MTV already provided for `task` (KeyError before `for_task`)."""
        return self._mtvs[task]

    def key_for(self, task: str, run: RunSettings, task_version: Any, pool: Any) -> MTVKey:
        """The cache key of `task`'s MTV: model, weights, revision, task, settings and support data."""
        assert run.mtv is not None, "only activation methods have an MTV"
        name, revision = model_identity(self.adapter.model)
        return MTVKey(
            model_name=name,
            revision=self.revision or revision,
            task=task,
            task_version=task_version,
            template=self.adapter.template.name,
            config=run.mtv.to_dict(),
            weights=self.weights,
            support=support_fingerprint(pool, run.mtv),
            method=run.method.kind,
            options=dict(run.options),
        )

    def for_task(self, task: str, run: RunSettings, task_version: Any, pool: Any) -> MTV:
        """The MTV of `task`, provided once per task and recorded in `records[task]`."""
        if task in self._mtvs:
            return self._mtvs[task]
        if self._explicit is not None:
            built_for = self._explicit.metadata.get("task")
            if built_for and built_for != task:
                raise ArtifactError(f"mtv_path holds an MTV for task {built_for!r}, not {task!r}")
            built_by = self._explicit.metadata.get("method", "mtv")
            if built_by != run.method.kind:
                raise ArtifactError(
                    f"mtv_path holds an artifact of method {built_by!r}, but the run's mode is {run.method.kind!r}"
                )
            self._mtvs[task] = self._explicit
            self.records[task] = {
                "source": "mtv_path",
                "path": str(self._explicit.source)[: -len(".json")],  # like the cache's: the name without suffix
                "content_hash": self._explicit.metadata.get("content_hash"),
                "selected_heads": self._explicit.num_heads_selected,
            }
            return self._explicit
        assert run.mtv is not None, "for_task needs a run of an activation method"
        pool = run.limit_pool(pool)  # mtv_pool=budget: only the S x I examples the budget allows
        key = self.key_for(task, run, task_version, pool)
        started = time.perf_counter()
        mtv, source, path = get_or_build(
            self.adapter, pool, key, run.mtv, self.cache_dir, progress=self.progress, log=self.log, group=self.ranks
        )
        self._mtvs[task] = mtv
        self.records[task] = {
            "source": source,
            "path": str(path),
            "cache_key": key.digest(),
            "seconds": round(time.perf_counter() - started, 3),
            "processes": self.ranks.world_size,
            "selected_heads": mtv.num_heads_selected,
            "content_hash": mtv.metadata.get("content_hash"),
            "weights_fingerprint": key.weights,
            "support_fingerprint": key.support,
            "config": run.mtv.to_dict(),
            "method": run.method.kind,
            "options": dict(run.options),
            "run": run.to_dict(),
        }
        return mtv

    def apply(self, task: str, kind: str, every_token: bool = True) -> Any:
        """The context manager that writes `task`'s artifact (of method `kind`) into the model."""
        from mtv_eval.methods import registry

        return registry.apply(kind, self.adapter, self.get(task), every_token=every_token)
