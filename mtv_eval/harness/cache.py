"""The artifact cache: one artifact per (model, weights, revision, task, task version, settings, seed,
support data, method).

A wrapper in mode=mtv and `mtv-eval extract` both go through `get_or_build`, so an MTV
built once (the expensive part: extraction + head search) is reused by every later run
with the same key, and a changed setting can never pick up a stale artifact.

Identity. A hub model is named by its id and revision. A local checkpoint's name is only
its path, so the key also carries `weights_fingerprint(folder)`: config, tokenizer and
weight files by name and size, each safetensors header, and a few sampled blocks of every
tensor's bytes (a checkpoint fine-tuned or replaced in place changes them; reading them
costs milliseconds, and results are memoised by file mtime). The support data is named by
`support_fingerprint`: a hash of the very examples the build draws (raw dataset rows when
the pool is a `datasets.Dataset`, else the examples' uids, texts, answers and pixels).

Concurrency. `get_or_build` holds a per-key file lock (`filelock`, a kernel lock that a
crashed holder releases) while it checks, builds and saves, so two processes (on one
machine, or on a shared disk) asking for the same MTV build it once: the second waits,
then loads. Processes of one `accelerate launch` take it in turn the same way; a launch
that builds one MTV collectively across ranks must call with `lock=False` on all ranks
but one.

With several processes (`group`, `mtv_eval.harness.distributed.Ranks`) rank 0 decides
whether the artifact is cached; a build is shared by all ranks (extraction prompts and
search masks divided between them); only rank 0 reads or writes the cache, and every rank
then receives rank 0's MTV, so all answer with the same tensors and no file is written twice.


Methods. The baselines reuse MTV's work through the cache: `random` takes
the MTV of the same budget and seed (building and caching it if needed), `all` and `fv`
take that MTV's means when it is cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mtv_eval.config import MTVConfig
from mtv_eval.data.examples import Example
from mtv_eval.harness.distributed import Ranks
from mtv_eval.methods.artifact import MTV, ArtifactError, artifact_paths
from mtv_eval.methods.mtv import build_mtv

# Weight formats fingerprinted by sampled bytes; any other file is hashed whole when small.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".npz", ".onnx")
SMALL_FILE_BYTES = 64 * 2**20
SAMPLE_BYTES = 4096
SAMPLES_PER_FILE = 64  # for non-safetensors weight files
# Files that never change what a model computes.
IGNORED_SUFFIXES = (".md", ".rst", ".png", ".jpg", ".jpeg", ".gif", ".lock", ".incomplete")
IGNORED_PREFIXES = ("LICENSE", "NOTICE", "README")

_FILE_DIGESTS: dict[tuple[str, int, int, int], str] = {}


@dataclass(frozen=True)
class MTVKey:
    """Everything an artifact depends on.

    `method` and `options` enter the digest only for methods other than plain MTV, so the
    keys (and cached files) of MTVs do not change with the method registry.

    Attributes:
        weights: `weights_fingerprint` of a local checkpoint (None for a hub model, whose
            revision names its weights).
        support: `support_fingerprint` of the support examples the build uses.
    """

    model_name: str
    revision: str | None
    task: str
    task_version: float | str
    template: str
    config: dict[str, Any]
    weights: str | None = None
    support: str | None = None
    method: str = "mtv"
    options: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        data = dict(self.__dict__)
        if self.method == "mtv" and not self.options:
            data.pop("method")
            data.pop("options")
        payload = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def path(self, cache_dir: str | Path) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "--", self.model_name).strip("-") or "model"
        name = self.task if self.method == "mtv" else f"{self.task}-{self.method}"
        return Path(cache_dir).expanduser() / slug / f"{name}-{self.digest()}"


# ----------------------------------------------------------------- fingerprints
def weights_fingerprint(folder: str | Path) -> str | None:
    """A cheap content fingerprint of a local checkpoint folder; None when `folder` is not one.

    Covers every file that can change the model's computation (configs, tokenizer files,
    weights, remote code), by relative name, size and content: small files whole, weight
    files through their safetensors header plus sampled blocks of each tensor (or evenly
    spaced blocks of other formats). Each file's digest is memoised by (size, mtime, inode).
    """
    root = Path(os.path.expanduser(os.fspath(folder)))
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in _model_files(root):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{_file_digest(path, stat)}\n".encode())
    return digest.hexdigest()[:16]


def _model_files(root: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or name.upper().startswith(IGNORED_PREFIXES):
                continue
            path = Path(directory) / name
            if path.is_file():
                yield path


def _file_digest(path: Path, stat: os.stat_result) -> str:
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            if path.suffix == ".safetensors":
                _feed_safetensors(handle, stat.st_size, digest, path)
            elif path.suffix in WEIGHT_SUFFIXES or stat.st_size > SMALL_FILE_BYTES:
                for offset in _spread(0, stat.st_size, SAMPLES_PER_FILE):
                    handle.seek(offset)
                    digest.update(handle.read(SAMPLE_BYTES))
            else:
                for block in iter(lambda: handle.read(2**20), b""):
                    digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def _feed_safetensors(handle: Any, size: int, digest: Any, path: Path) -> None:
    """Header, then the first, middle and last block of every tensor's bytes."""
    raw = handle.read(8)
    length = int.from_bytes(raw, "little") if len(raw) == 8 else -1
    if not 0 < length <= min(size - 8, 100 * 2**20):
        raise ValueError(f"{path} is not a safetensors file (bad header); the checkpoint is damaged")
    header = handle.read(length)
    digest.update(header)
    try:
        entries = json.loads(header)
    except ValueError:
        raise ValueError(f"{path} has an unreadable safetensors header; the checkpoint is damaged") from None
    start = 8 + length
    for name in sorted(k for k in entries if k != "__metadata__"):
        begin, end = entries[name].get("data_offsets", (0, 0))
        for offset in _spread(start + begin, start + end, 3):
            handle.seek(offset)
            digest.update(handle.read(min(SAMPLE_BYTES, start + end - offset)))


def _spread(begin: int, end: int, count: int) -> list[int]:
    """`count` block offsets spread evenly over [begin, end), first and last block included."""
    last = max(begin, end - SAMPLE_BYTES)
    if count <= 1 or last == begin:
        return [begin]
    return sorted({begin + (last - begin) * i // (count - 1) for i in range(count)})


def used_support_indices(pool_size: int, config: MTVConfig) -> list[int]:
    """Indices of the pool examples an MTV build with `config` reads (extraction and search)."""
    from mtv_eval.engine.mean import plan_prompts

    plan = plan_prompts(pool_size, config.extract.shots, config.extract.iterations, config.extract.seed)
    used = {i for shots in plan.shots for i in shots} | set(plan.queries)
    used |= set(split_support(pool_size, config.search.pool_size, config.search.seed))
    return sorted(used)


def support_fingerprint(pool: Sequence[Example], config: MTVConfig) -> str:
    """A hash of the support examples a build with `config` uses (and of the pool's size).

    Raw rows are hashed when the pool exposes a `datasets.Dataset` as `.docs` (no image
    decoding; image files referenced by path are read); otherwise each Example's uid, texts,
    answers and image pixels.
    """
    indices = used_support_indices(len(pool), config)
    digest = hashlib.sha256(f"pool={len(pool)};used={len(indices)}".encode())
    docs = getattr(pool, "docs", None)
    try:
        import datasets

        raw = isinstance(docs, datasets.Dataset)
    except ImportError:  # pragma: no cover - datasets is a dependency
        raw = False
    if raw:
        rows = docs.select(indices).with_format("arrow")[:].to_pylist()
        for index, row in zip(indices, rows):
            digest.update(f"#{index}".encode())
            _feed_value(digest, row)
    else:
        for index in indices:
            example = pool[index]
            digest.update(f"#{index}:{example.uid}".encode())
            _feed_value(digest, list(example.segments))
            _feed_value(digest, [example.answer, *example.answers])
    return digest.hexdigest()[:16]


def _feed_value(digest: Any, value: Any) -> None:
    """Feed a row value into `digest` unambiguously (type tags and lengths)."""
    if isinstance(value, dict):
        if set(value) == {"bytes", "path"} and value["bytes"] is None and value["path"]:
            path = Path(value["path"])  # an image stored by path: its file is the content
            value = {"path": value["path"], "bytes": path.read_bytes() if path.is_file() else None}
        digest.update(f"d{len(value)}".encode())
        for key in sorted(value, key=str):
            _feed_value(digest, str(key))
            _feed_value(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"l{len(value)}".encode())
        for item in value:
            _feed_value(digest, item)
    elif isinstance(value, (bytes, bytearray)):
        digest.update(f"b{len(value)}:".encode())
        digest.update(value)
    elif isinstance(value, str):
        encoded = value.encode()
        digest.update(f"s{len(encoded)}:".encode())
        digest.update(encoded)
    elif hasattr(value, "tobytes") and hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
        pixels = value.tobytes()
        digest.update(f"i{value.mode}{value.size}{len(pixels)}:".encode())
        digest.update(pixels)
    else:
        digest.update(f"r{value!r};".encode())


# ----------------------------------------------------------------- building
def split_support(pool_size: int, search_examples: int, seed: int) -> list[int]:
    """Seeded indices of the head-search examples within the support pool."""
    rng = random.Random(seed)
    return rng.sample(range(pool_size), min(search_examples, pool_size))


@contextmanager
def key_lock(path: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of one cache entry; say so once when another process holds it."""
    from filelock import FileLock, Timeout

    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"MTV cache entry {path} is being built by another process; waiting for it (lock {lock_path})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def get_or_build(
    adapter: Any,
    pool: Sequence[Example],
    key: MTVKey,
    config: MTVConfig,
    cache_dir: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    lock: bool = True,
    group: Ranks | None = None,
) -> tuple[MTV, str, Path]:
    """Load the artifact of `key` from the cache or build (with `key.method`) and save it,
    under the key's lock.

    Args:
        lock: take the per-key file lock (see the module docstring for launches that build
            collectively).
        group: the ranks of a multi-process run (all must call this together; rank 0 alone
            takes the lock); None = one process.

    Returns:
        (artifact, "cache" or "built", artifact path without suffix).
    """
    from mtv_eval.engine.mean import mean_activations
    from mtv_eval.methods import registry

    ranks = group or Ranks()
    label = "MTV" if key.method == "mtv" else f"baseline {key.method}"
    path = key.path(cache_dir)
    with key_lock(path, log) if lock and ranks.is_main else nullcontext():
        # rank 0 decides (under the key's lock) whether the artifact is cached; all ranks follow
        cached = ranks.broadcast_text("cached" if artifact_paths(path)[1].is_file() else "") == "cached"
        if cached:
            mtv = _load_cached(adapter, key, path, log, label) if ranks.is_main else None
            return _from_main(ranks, mtv), "cache", path
        search_indices = split_support(len(pool), config.search.pool_size, config.search.seed)
        search_pool = [pool[i] for i in search_indices]
        budget = f"{config.extract.shots} shots x {config.extract.iterations} iterations"
        started = time.perf_counter()
        if key.method == "mtv":
            log(
                f"{label} for {key.task}: building ({budget}, {config.search.steps} search steps on {len(search_pool)} examples)"
            )
            mtv = build_mtv(
                adapter,
                pool,
                search_pool,
                config,
                task=key.task,
                model_name=key.model_name,
                progress=progress,
                group=group if ranks.distributed else None,
            )
            mtv.metadata.pop("method", None)  # MTV artifacts keep the metadata of earlier releases
        else:  # baselines reuse MTV's means (and `random` its head count); they run no REINFORCE search
            log(f"{label} for {key.task}: building on MTV's means ({budget}, {len(pool)} support examples)")
            base_key = replace(key, method="mtv", options={})
            means_cache: list[Any] = []

            def base_mtv() -> MTV:
                return get_or_build(
                    adapter, pool, base_key, config, cache_dir, progress=progress, log=log, lock=lock, group=group
                )[0]

            def means() -> Any:
                if not means_cache:
                    base_path = base_key.path(cache_dir)
                    if artifact_paths(base_path)[1].is_file():
                        means_cache.append(_load_cached(adapter, base_key, base_path, log, "MTV").means)
                    else:
                        means_cache.append(mean_activations(adapter, pool, config.extract, progress=progress))
                return means_cache[0]

            ctx = registry.BuildContext(
                adapter=adapter,
                pool=pool,
                search_pool=search_pool,
                config=config,
                task=key.task,
                model_name=key.model_name,
                options=dict(key.options),
                progress=progress,
                means=means,
                base_mtv=base_mtv,
            )
            mtv = registry.build(key.method, ctx)
        mtv.metadata.update(
            cache_key=key.digest(),
            task_version=key.task_version,
            template=key.template,
            model_revision=key.revision,
            weights_fingerprint=key.weights,
            support_fingerprint=key.support,
        )
        if ranks.is_main:
            mtv.save(path)
            log(
                f"{label} for {key.task}: saved {path}.json ({mtv.num_heads_selected} heads, "
                f"{time.perf_counter() - started:.1f} s)"
            )
    return _from_main(ranks, mtv), "built", path


def _load_cached(adapter: Any, key: MTVKey, path: Path, log: Callable[[str], None], label: str = "MTV") -> MTV:
    mtv = MTV.load(path)
    if mtv.metadata.get("cache_key") != key.digest():
        raise ArtifactError(
            f"cached {label} {path}.json does not carry the key {key.digest()} it is filed under; delete it and rebuild"
        )
    for field_name, wanted in (("weights_fingerprint", key.weights), ("support_fingerprint", key.support)):
        if mtv.metadata.get(field_name) != wanted:
            raise ArtifactError(
                f"cached {label} {path}.json records {field_name}={mtv.metadata.get(field_name)!r}, the key "
                f"has {wanted!r}; delete it and rebuild"
            )
    mtv.check_compatible(key.model_name, adapter.sites.shape, adapter.sites.model_type, key.weights)
    log(f"{label} for {key.task}: loaded from cache {path}.json ({mtv.num_heads_selected} heads)")
    return mtv


def _from_main(ranks: Ranks, mtv: MTV | None) -> MTV:
    """Rank 0's MTV (tensors and metadata) on every rank; other ranks pass theirs or None."""
    if not ranks.distributed:
        assert mtv is not None
        return mtv
    main = mtv if ranks.is_main else None
    what = "sharing the MTV of rank 0"
    means = ranks.broadcast_tensor(main.means.float().cpu() if main else None, what=what)
    mask = ranks.broadcast_tensor(main.mask.bool().cpu() if main else None, what=what)
    probs = ranks.broadcast_tensor(main.probs.float().cpu() if main else None, what=what)
    text = ranks.broadcast_text(json.dumps(main.metadata, default=str) if main is not None else None, what=what)
    return MTV(means=means, mask=mask, probs=probs, metadata=json.loads(text))
