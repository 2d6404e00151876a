"""Avatar registration: one portrait becomes a bundle the renderer can animate.

Steps: validate and decode the image (by content, with size limits), find the face
and its 468 landmarks, choose the animated region (face box grown by
``expand_ratio``), build a mesh, and precompute what each motion control does to it:
per-vertex displacements and dense backward-warp fields on a coarse grid. The bundle
is cached on disk by content hash (image bytes + parameters + format version).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realtime import render_fields
from realtime.landmarks import FaceMesh, ModelsMissingError

log = logging.getLogger(__name__)

FORMAT_VERSION = 7  # bump whenever registration output changes: old caches then miss
MAX_IMAGE_BYTES = 20_000_000
MAX_IMAGE_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 64
MIN_EYE_DISTANCE = 12.0  # pixels between the eye centres; below this the face is too small to animate
MAX_WORK_SIDE = 1440  # larger photos are downscaled: output is 512..1024, so more detail is never shown

ERROR_CODES = (
    "not_an_image",
    "corrupt_image",
    "image_too_large",
    "image_too_small",
    "no_face",
    "face_too_small",
    "multiple_faces",
)


class AvatarError(ValueError):
    """A portrait that cannot become an avatar; ``code`` says why (see ``ERROR_CODES``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class AvatarBundle:
    """Everything the renderer needs for one portrait.

    ``image`` is the (possibly downscaled) photo; all geometry is in its pixels.
    ``fields`` holds one backward-warp displacement field per entry of
    ``render_fields.FIELDS`` on a grid over ``roi``; ``vertex_disp`` the matching
    per-vertex forward displacements of the mesh.
    """

    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    landmarks: np.ndarray  # (468, 3) float32
    crop_box: np.ndarray  # (4,) x0, y0, x1, y1: face box grown by expand_ratio
    roi: np.ndarray  # (4,) int: animated region x0, y0, x1, y1 (exclusive)
    grid_step: float
    fields: np.ndarray  # (n_fields, gh, gw, 2) float16, image pixels
    vertices: np.ndarray  # (n_vertices, 2) float32
    vertex_disp: np.ndarray  # (n_fields, n_vertices, 2) float32
    triangles: np.ndarray  # (n_triangles, 3) int32: the mesh topology
    meta: dict = field(default_factory=dict)  # scalars: eye distance, apertures, colours, params

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the bundle's image."""
        return int(self.image.shape[1]), int(self.image.shape[0])


# -- image validation -----------------------------------------------------------


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_image(
    data: bytes,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    draft_side: int = MAX_WORK_SIDE,
) -> np.ndarray:
    """Decode PNG/JPEG/WebP bytes (recognised by content) to RGB uint8, or raise AvatarError.

    Big JPEGs may come back smaller (but with the shorter side >= ``draft_side``).
    """
    from PIL import Image, ImageOps

    if len(data) > max_bytes:
        raise AvatarError("image_too_large", f"image is {len(data)} bytes; the limit is {max_bytes}")
    kind = _sniff(data)
    if kind is None:
        raise AvatarError("not_an_image", "not a PNG, JPEG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[kind.upper()])
            w, h = img.size
            if w * h > max_pixels:
                raise AvatarError("image_too_large", f"image is {w}x{h}; the limit is {max_pixels} pixels")
            if kind == "jpeg" and min(w, h) >= 2 * draft_side:
                # decode big JPEGs at 1/2, 1/4 or 1/8 scale directly (DCT scaling): much faster
                img.draft("RGB", (max(w * draft_side // min(w, h), 1), max(h * draft_side // min(w, h), 1)))
            img.load()
            img = ImageOps.exif_transpose(img)
    except AvatarError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise AvatarError("image_too_large", f"image too large: {e}") from None
    except Exception as e:  # PIL raises many types for broken files
        raise AvatarError("corrupt_image", f"cannot decode {kind} image: {e}") from None
    return _to_rgb(img)


def _to_rgb(img) -> np.ndarray:
    """Any PIL mode to RGB uint8; transparency is composited over white."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        gray = np.clip((arr - lo) / max(hi - lo, 1e-9) * 255 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _read_source(source: bytes | str | Path, max_bytes: int) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise AvatarError("not_an_image", f"cannot read {path}: {e.strerror}") from None
    if size > max_bytes:
        raise AvatarError("image_too_large", f"{path} is {size} bytes; the limit is {max_bytes}")
    return path.read_bytes()


# -- registration -------------------------------------------------------------


def bundle_key(data: bytes, expand_ratio: float, face: str | int) -> str:
    """Content hash of the image bytes, the parameters and the bundle format version."""
    h = hashlib.sha256()
    h.update(data)
    h.update(json.dumps({"expand_ratio": round(float(expand_ratio), 4), "face": str(face)}).encode())
    h.update(f"v{FORMAT_VERSION}".encode())
    return h.hexdigest()[:32]


def _select_face(faces: list, face: str | int):
    if not faces:
        raise AvatarError("no_face", "no face found in the image")
    if isinstance(face, str) and face not in ("largest", "error"):
        try:
            face = int(face)
        except ValueError:
            raise ValueError(f"face must be 'largest', 'error' or an index, got {face!r}") from None
    if face == "largest":
        return faces[0]
    if face == "error":
        if len(faces) > 1:
            raise AvatarError("multiple_faces", f"{len(faces)} faces found; pass face=INDEX to choose one")
        return faces[0]
    # an index counts faces from left to right, which a user can see
    ordered = sorted(faces, key=lambda f: float(f.box[0]))
    if not 0 <= int(face) < len(ordered):
        raise AvatarError("multiple_faces", f"face index {face} out of range: {len(ordered)} face(s) found")
    return ordered[int(face)]


def register_avatar(
    source: bytes | str | Path,
    *,
    expand_ratio: float = 0.15,
    cache_dir: str | Path | None = None,
    face: str | int = "largest",
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    min_eye_distance: float = MIN_EYE_DISTANCE,
) -> AvatarBundle:
    """Validate a portrait, fit the face mesh and precompute the motion fields (cached by content).

    ``face``: "largest" (default), "error" (raise ``multiple_faces`` if there are
    several) or an index counted from the left. Raises :class:`AvatarError`.
    """
    if not (0.0 <= float(expand_ratio) <= 2.0) or not np.isfinite(expand_ratio):
        raise ValueError("expand_ratio must be in 0..2")
    data = _read_source(source, max_bytes)
    key = bundle_key(data, expand_ratio, face)
    if cache_dir is not None:
        cached = load_cached_bundle(key, cache_dir=cache_dir)
        if cached is not None:
            return cached
    image = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise AvatarError(
            "image_too_small", f"image is {w}x{h}; the shorter side must be >= {MIN_IMAGE_SIDE}"
        )
    if min(h, w) > MAX_WORK_SIDE:
        import cv2

        s = MAX_WORK_SIDE / min(h, w)
        image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    mesh = FaceMesh()  # raises ModelsMissingError ("run scripts/fetch_models.py")
    faces = [f for f in mesh.faces(image) if f.presence >= 0.5]
    chosen = _select_face(faces, face)
    if chosen.eye_distance < min_eye_distance:
        raise AvatarError(
            "face_too_small",
            f"the face is too small ({chosen.eye_distance:.0f} px between the eyes; need {min_eye_distance:.0f})",
        )
    built = render_fields.build(image, chosen.landmarks, expand_ratio=float(expand_ratio))
    bundle = AvatarBundle(
        key=key,
        image=image,
        landmarks=chosen.landmarks.astype(np.float32),
        crop_box=built.crop_box,
        roi=built.roi,
        grid_step=built.grid_step,
        fields=built.fields,
        vertices=built.vertices,
        vertex_disp=built.vertex_disp,
        triangles=built.triangles,
        meta={**built.meta, "expand_ratio": float(expand_ratio), "faces_found": len(faces)},
    )
    if cache_dir is not None:
        try:
            save_bundle(bundle, cache_dir)
        except OSError as e:  # a read-only cache must not fail registration
            log.warning("could not cache avatar %s: %s", key, e)
    return bundle


# -- cache --------------------------------------------------------------------

_ARRAYS = ("image", "landmarks", "crop_box", "roi", "fields", "vertices", "vertex_disp", "triangles")


def _cache_path(key: str, cache_dir: str | Path) -> Path:
    if not key or not all(c in "0123456789abcdef" for c in key):
        raise KeyError(key)
    return Path(cache_dir) / f"{key}.npz"


def save_bundle(bundle: AvatarBundle, cache_dir: str | Path) -> Path:
    """Write the bundle atomically (temp file + rename) so readers never see half a file."""
    path = _cache_path(bundle.key, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "key": bundle.key,
        "version": FORMAT_VERSION,
        "grid_step": bundle.grid_step,
        "meta": bundle.meta,
    }
    arrays = {name: getattr(bundle, name) for name in _ARRAYS}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_cached_bundle(key: str, *, cache_dir: str | Path) -> AvatarBundle | None:
    """The cached bundle for ``key``, or None when absent, stale or corrupt (never trusted blindly)."""
    try:
        path = _cache_path(key, cache_dir)
    except KeyError:
        return None
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            arrays = {name: np.array(z[name]) for name in _ARRAYS}
        if header.get("version") != FORMAT_VERSION or header.get("key") != key:
            return None
        bundle = AvatarBundle(
            key=key, grid_step=float(header["grid_step"]), meta=dict(header["meta"]), **arrays
        )
        _check(bundle)
        return bundle
    except Exception as e:
        log.warning("ignoring corrupt avatar cache %s: %s", path, e)
        return None


def _check(b: AvatarBundle) -> None:
    """Shape and value checks on a loaded bundle; raises ValueError if anything is off."""
    from realtime.render_fields import FIELDS

    h, w = b.image.shape[:2]
    ok = (
        b.image.dtype == np.uint8
        and b.image.ndim == 3
        and b.image.shape[2] == 3
        and b.landmarks.shape == (468, 3)
        and b.fields.ndim == 4
        and b.fields.shape[0] == len(FIELDS)
        and b.fields.shape[3] == 2
        and b.vertex_disp.shape[0] == len(FIELDS)
        and b.vertex_disp.shape[1:] == b.vertices.shape
        and b.roi.shape == (4,)
        and 0 <= b.roi[0] < b.roi[2] <= w
        and 0 <= b.roi[1] < b.roi[3] <= h
        and b.grid_step > 0
        and np.isfinite(b.fields.astype(np.float32)).all()
        and np.isfinite(b.vertex_disp).all()
        and b.triangles.ndim == 2
        and b.triangles.shape[1] == 3
        and b.triangles.min() >= 0
        and b.triangles.max() < len(b.vertices)
    )
    if not ok:
        raise ValueError("bundle arrays have unexpected shapes or values")


# -- CLI ----------------------------------------------------------------------


def cli_main(argv: list[str]) -> int:
    """``avatar register IMAGE [--expand-ratio R] [--cache-dir DIR] [--face largest|error|N]``."""
    from realtime.config import load_config

    parser = argparse.ArgumentParser(prog="avatar register", description="Register a portrait as an avatar.")
    parser.add_argument("image", help="PNG, JPEG or WebP portrait")
    parser.add_argument("--expand-ratio", type=float, default=0.15, help="grow the face box by this ratio")
    parser.add_argument(
        "--cache-dir", default=None, help="bundle cache (default: avatars.cache_dir from config)"
    )
    parser.add_argument("--face", default="largest", help="'largest', 'error' (if several) or an index")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir
    if cache_dir is None:
        cfg = load_config()
        cache_dir = cfg.resolve(cfg.avatars.cache_dir)
    t0 = time.perf_counter()
    try:
        data = _read_source(args.image, MAX_IMAGE_BYTES)
        cached = (Path(cache_dir) / f"{bundle_key(data, args.expand_ratio, args.face)}.npz").is_file()
        bundle = register_avatar(data, expand_ratio=args.expand_ratio, cache_dir=cache_dir, face=args.face)
    except AvatarError as e:
        print(f"error ({e.code}): {e}", file=sys.stderr, flush=True)
        return 1
    except (ValueError, ModelsMissingError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    ms = (time.perf_counter() - t0) * 1000
    w, h = bundle.size
    print(f"key {bundle.key}")
    source = "from cache" if cached else "registered"
    faces = bundle.meta.get("faces_found", 1)
    print(f"image {w}x{h}, {faces} face(s), roi {bundle.roi.tolist()}, {source} in {ms:.0f} ms")
    return 0
