"""Process-wide engine: the models and avatars that sessions and jobs share.

Loaded once per process (aiohttp ``cleanup_ctx`` for the server, directly for the
CLI). Framework-free: no aiohttp or aiortc here. The engine owns the one
inference executor that all model and render work runs on, so compute stays off
the event loop and the thread count is fixed.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from realtime.config import Config

if TYPE_CHECKING:
    from realtime.avatar import AvatarBundle
    from realtime.generator import MotionModel
    from realtime.renderer import PortraitRenderer

log = logging.getLogger(__name__)


class Engine:
    """Models, avatar bundles and renderers shared by every session and job."""

    def __init__(self, config: Config, *, inference_workers: int = 2, max_cached_avatars: int = 16) -> None:
        self.config = config
        self.executor = ThreadPoolExecutor(max_workers=inference_workers, thread_name_prefix="inference")
        self._lock = threading.Lock()
        self._bundles: OrderedDict[str, AvatarBundle] = OrderedDict()
        self._renderers: OrderedDict[tuple[str, int], PortraitRenderer] = OrderedDict()
        self._max_cached = max_cached_avatars
        self._motion_model: MotionModel | None = None
        self._model_lock = threading.Lock()  # one load even when two jobs ask at once
        self.ready = False

    # -- models -------------------------------------------------------------
    @property
    def motion_model(self) -> MotionModel:
        """The motion model, loaded on first use."""
        with self._model_lock:
            if self._motion_model is None:
                from realtime.generator import MotionModel

                cfg = self.config.model
                self._motion_model = MotionModel.load(
                    self.config.resolve(cfg.path), backend=cfg.backend, precision=cfg.precision
                )
            return self._motion_model

    def warmup(self, *, motion: bool = True) -> None:
        """Load the default avatar, and the motion model unless ``motion`` is false, so the first
        session starts fast.

        The front of a server with live worker processes passes ``motion=False``: it needs the
        model only for offline jobs, and loading it (torch and onnxruntime, about 265 MB, 1.6 s)
        at the first job keeps it out of memory on servers that only stream.
        """
        if motion:
            self.motion_model.warmup()
        bundle = self.avatar("default")
        self.renderer(bundle, self.config.live.resolution)
        self.ready = True
        loaded = f"motion model ({self.motion_model.backend_name}) and " if motion else ""
        log.info("engine warm: %sdefault avatar loaded", loaded)

    # -- avatars ------------------------------------------------------------
    def avatar(self, name: str) -> AvatarBundle:
        """The bundle for ``"default"`` or for a key returned by :meth:`register`.

        Raises ``KeyError`` for an unknown avatar.
        """
        if name == "default":
            with self._lock:
                cached = self._bundles.get("default")
            if cached is not None:
                return cached
            path = self.config.resolve(self.config.avatars.default_image)
            bundle = self.register(path.read_bytes(), alias="default")
            return bundle
        with self._lock:
            bundle = self._bundles.get(name)
            if bundle is not None:
                self._bundles.move_to_end(name)
                return bundle
        from realtime.avatar import load_cached_bundle

        bundle = load_cached_bundle(name, cache_dir=self.avatar_cache_dir)
        if bundle is None:
            raise KeyError(name)
        self._remember(name, bundle)
        return bundle

    @property
    def avatar_cache_dir(self) -> Path:
        return self.config.resolve(self.config.avatars.cache_dir)

    def register(self, image: bytes, *, expand_ratio: float = 0.15, alias: str | None = None) -> AvatarBundle:
        """Register a portrait (cached on disk by content hash) and remember it."""
        from realtime.avatar import register_avatar

        bundle = register_avatar(image, expand_ratio=expand_ratio, cache_dir=self.avatar_cache_dir)
        self._remember(bundle.key, bundle)
        if alias is not None:
            self._remember(alias, bundle)
        return bundle

    def renderer(self, bundle: AvatarBundle, resolution: int) -> PortraitRenderer:
        """A renderer for ``bundle`` at ``resolution``; renderers are stateless and shared."""
        from realtime.renderer import PortraitRenderer

        key = (bundle.key, resolution)
        with self._lock:
            cached = self._renderers.get(key)
            if cached is not None:
                self._renderers.move_to_end(key)
                return cached
        made = PortraitRenderer(bundle, min_resolution=resolution)
        with self._lock:
            self._renderers[key] = made
            while len(self._renderers) > self._max_cached:
                self._renderers.popitem(last=False)
        return made

    def _remember(self, key: str, bundle: AvatarBundle) -> None:
        with self._lock:
            self._bundles[key] = bundle
            self._bundles.move_to_end(key)
            while len(self._bundles) > self._max_cached:
                oldest = next(iter(self._bundles))
                if oldest == "default":
                    self._bundles.move_to_end(oldest)
                    oldest = next(iter(self._bundles))
                self._bundles.pop(oldest)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
