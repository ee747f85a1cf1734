"""Train the top of the network on cached activations of a frozen trunk.

On a small CPU the first stages of an EfficientNet (high resolution,
depthwise convolutions) cost most of a training step, yet kept at their
ImageNet weights they give the same activations for the same view of an
image every epoch. So the trunk (`training.freeze_stages` stages) is run
once over a fixed set of views per image, the activations are kept (float16)
in the per-user cache, and the remaining stages, CBAM and the head are
trained on them: 2.7x the samples per minute of training the whole network
with 4 stages frozen (benchmarks/results/frozen_trunk.json, docs/training.md). The checkpoint still
holds the whole network (the trunk keeps its ImageNet weights), so evaluation,
export and explanations see an ordinary model.

Views per image: 0-3 are the flips (identity, horizontal, vertical, both),
the evaluation and test-time-augmentation views; 4.. are draws of the
training augmentation, each seeded by (seed, image, view), so an entry is the
same whichever run computes it first. Training draws a view per sample; each
epoch validates on the identity view; out-of-fold logits and evaluation average
the logits of the flip views (test-time augmentation).

The activations are computed where they are missing and kept: cross-validation
folds, later runs and leave-one-source-out runs of the same trunk reuse them.
ONNX Runtime computes them when it is installed (about twice eager PyTorch's
speed on a CPU, checked against PyTorch on the first batch); else PyTorch.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import AugmentationSection, user_cache_dir
from ..data.transforms import build_eval_transform, build_train_transform
from ..models.classifier import LesionClassifier
from ..user_cache import mark_used

log = logging.getLogger(__name__)

FLIP_VIEWS = 4                      # views 0-3: identity, horizontal, vertical, both flips
IDENTITY_VIEW = 0
PARITY_TOLERANCE = 1e-3             # ONNX Runtime vs PyTorch trunk activations, max |difference|
_BATCH = 32


@dataclass(frozen=True)
class TrunkSpec:
    stages: int                     # stem + this many block stages are frozen and cached
    augmented_views: int            # training-augmentation draws per image, besides the four flips
    seed: int

    @property
    def views(self) -> int:
        return FLIP_VIEWS + self.augmented_views


def images_identity(images: np.ndarray) -> str:
    """What the image array holds: the image cache's own key when it is one, else a hash of its pixels."""
    filename = getattr(images, "filename", None)
    if filename:
        return Path(filename).stem
    digest = hashlib.sha256()
    digest.update(str(images.shape).encode())
    digest.update(memoryview(np.ascontiguousarray(images)).cast("B"))
    return digest.hexdigest()


def trunk_identity(model: LesionClassifier, stages: int) -> str:
    """sha256 over the trunk's parameters and buffers: a retrained or other trunk gets other activations."""
    digest = hashlib.sha256()
    for module in model.trunk_modules(stages):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _flip(image: np.ndarray, view: int) -> np.ndarray:
    if view & 1:
        image = image[:, ::-1]
    if view & 2:
        image = image[::-1]
    return np.ascontiguousarray(image)


class _Trunk(nn.Module):
    def __init__(self, model: LesionClassifier, stages: int):
        super().__init__()
        self.layers = nn.Sequential(*copy.deepcopy(model.trunk_modules(stages)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _TrunkRunner:
    """The frozen trunk as a function of a normalised batch: ONNX Runtime when it matches PyTorch, else PyTorch."""

    def __init__(self, model: LesionClassifier, stages: int, image_size: int, workdir: Path):
        self.torch_trunk = _Trunk(model, stages).eval().requires_grad_(False)
        self.session = None
        self.image_size = image_size
        self.workdir = workdir
        self.checked = False

    def _onnx_session(self):
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        handle, name = tempfile.mkstemp(dir=self.workdir, prefix=".trunk-", suffix=".onnx")
        os.close(handle)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(self.torch_trunk, (torch.zeros(2, 3, self.image_size, self.image_size),), name,
                                  dynamo=False, opset_version=17, input_names=["image"], output_names=["trunk"],
                                  dynamic_axes={"image": {0: "batch"}, "trunk": {0: "batch"}})
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.log_severity_level = 3
            return ort.InferenceSession(name, options, providers=["CPUExecutionProvider"])
        except Exception as error:   # any exporter or runtime failure: PyTorch computes the same numbers
            log.info("frozen trunk: ONNX Runtime unavailable (%s: %s); using PyTorch", type(error).__name__, error)
            return None
        finally:
            Path(name).unlink(missing_ok=True)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.checked:
            self.checked = True
            self.session = self._onnx_session()
            if self.session is not None:
                expected = self._torch(batch)
                got = self.session.run(None, {"image": batch})[0]
                difference = float(np.abs(got - expected).max())
                if difference > PARITY_TOLERANCE * max(1.0, float(np.abs(expected).max())):
                    log.warning("frozen trunk: ONNX Runtime differs from PyTorch by %.2e; using PyTorch", difference)
                    self.session = None
                else:
                    log.info("frozen trunk activations through ONNX Runtime (max |difference| %.1e)", difference)
                return expected
        if self.session is not None:
            return self.session.run(None, {"image": batch})[0]
        return self._torch(batch)

    @torch.inference_mode()
    def _torch(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        return self.torch_trunk(x).float().contiguous().numpy()


# One read-only mapping of a cache file per process. Cross-validation opens the pool's cache and then
# each fold's training module opens it again; every mapping, once read through, counts the whole file
# in the process's resident memory although the pages are shared: the CPU recipe's job showed 6.7 GB
# RSS for 4.0 GB PSS by its second fold, and /usr/bin/time reported a 20 GB peak.
_READ_MAPPINGS: "weakref.WeakValueDictionary[tuple, np.memmap]" = weakref.WeakValueDictionary()


class TrunkActivations:
    """(N, views, C, H, W) float16 activations of a frozen trunk over an image array, computed where missing.

    Kept in `cache_dir` (None: the per-user cache) under a key of everything
    they depend on: the images, the trunk's weights, its stage count, the
    preprocessing, the augmentation settings and the seed. A `.done` table
    says which entries exist; a lock file serialises writers.
    """

    def __init__(self, model: LesionClassifier, images: np.ndarray, spec: TrunkSpec,
                 augmentation: AugmentationSection, cache_dir: Path | None = None, progress: bool = True):
        self.spec = spec
        self.images = images
        self.model = model
        self.preprocessing = model.preprocessing
        self.augmentation = augmentation
        self.progress = progress
        model.check_trunk_stages(spec.stages)
        size = self.preprocessing.image_size
        trunk = trunk_identity(model, spec.stages)
        # The shape probe runs in eval mode: in train mode its forward pass would move the trunk's
        # batch-norm statistics (by a zero image, through random drop-path), so each model that built
        # a cache would hold, and cache, a slightly different trunk.
        was_training = model.training
        try:
            with torch.inference_mode():
                probe = model.eval().forward_trunk(torch.zeros(1, 3, size, size), spec.stages)
        finally:
            model.train(was_training)
        self.shape = (len(images), spec.views, *probe.shape[1:])
        key = {"images": images_identity(images), "trunk": trunk,
               "backbone": model.config.backbone, "spec": asdict(spec), "preprocessing": self.preprocessing.to_dict(),
               "augmentation": asdict(augmentation), "shape": list(self.shape), "version": 1}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        self.folder = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "trunk-activations"
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"{model.config.backbone}-{spec.stages}stages-{spec.views}views-{digest}"
        self.array_path = self.folder / f"{stem}.npy"
        self.done_path = self.folder / f"{stem}.done.npy"
        self.lock_path = self.folder / f"{stem}.lock"
        self.seconds_computing = 0.0
        self._array: np.ndarray | None = None

    # ------------------------------------------------------------------ storage
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _done(self) -> np.ndarray:
        if self.done_path.is_file():
            try:
                done = np.load(self.done_path)
                if done.shape == self.shape[:2]:
                    return done
            except (OSError, ValueError):
                pass
        return np.zeros(self.shape[:2], dtype=bool)

    def _save_done(self, done: np.ndarray) -> None:
        handle, name = tempfile.mkstemp(dir=self.folder, prefix=f".{self.done_path.stem}-", suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            np.save(out, done)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, self.done_path)

    def _open(self, mode: str) -> np.ndarray:
        if mode == "r+" and not self.array_path.is_file():
            # A sparse file: only the entries computed take disk space.
            np.lib.format.open_memmap(self.array_path, mode="w+", dtype=np.float16, shape=self.shape).flush()
        if mode != "r":
            return np.load(self.array_path, mmap_mode=mode)
        mark_used(self.array_path)   # `dermalens cache --older-than` goes by last use
        stat = self.array_path.stat()
        key = (stat.st_dev, stat.st_ino)   # the file itself, however its path is spelt; a replaced file is another
        mapping = _READ_MAPPINGS.get(key)
        if mapping is None:
            mapping = _READ_MAPPINGS[key] = np.load(self.array_path, mmap_mode="r")
        return mapping

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._open("r")
        return self._array

    # ------------------------------------------------------------------ computing
    def view_input(self, row: int, view: int) -> np.ndarray:
        """The normalised (3, S, S) float32 input of one view of one image."""
        image = np.asarray(self.images[row])
        if view < FLIP_VIEWS:
            return self._eval_transform(image=_flip(image, view))["image"].numpy()
        self._train_transform.set_random_seed(int(np.random.SeedSequence(
            [self.spec.seed, int(row), int(view)]).generate_state(1)[0]))
        return self._train_transform(image=image)["image"].numpy()

    def ensure(self, rows: Sequence[int], views: Sequence[int]) -> None:
        """Compute and keep the activations of `views` of `rows` that are not there yet."""
        rows, views = np.asarray(rows, dtype=np.int64), np.asarray(views, dtype=np.int64)
        if len(rows) == 0 or len(views) == 0:
            return
        if views.max() >= self.spec.views:
            raise ValueError(f"view {int(views.max())} of a trunk cache of {self.spec.views} views")
        with self._locked():
            done = self._done()
            pending = [(int(r), int(v)) for r in rows for v in views if not done[r, v]]
            if not pending:
                self._array = None
                return
            self._eval_transform = build_eval_transform(self.preprocessing)
            self._train_transform = build_train_transform(self.preprocessing, self.augmentation, seed=self.spec.seed)
            runner = _TrunkRunner(self.model, self.spec.stages, self.preprocessing.image_size, self.folder)
            array = self._open("r+")
            started = time.perf_counter()
            with tqdm(total=len(pending), desc=f"frozen trunk ({self.spec.stages} stages)", unit="view",
                      disable=not self.progress) as bar:
                for start in range(0, len(pending), _BATCH):
                    chunk = pending[start:start + _BATCH]
                    batch = np.stack([self.view_input(r, v) for r, v in chunk]).astype(np.float32)
                    out = runner(batch).astype(np.float16)
                    for (r, v), activation in zip(chunk, out):
                        array[r, v] = activation
                        done[r, v] = True
                    if (start // _BATCH) % 20 == 19 or start + _BATCH >= len(pending):
                        array.flush()
                        self._save_done(done)
                    bar.update(len(chunk))
            self.seconds_computing += time.perf_counter() - started
            del array
            self._array = None
