"""Avatar registration: image validation, face choice, the bundle and its on-disk cache."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import faces
import numpy as np
import pytest

from realtime.avatar import (
    ERROR_CODES,
    FORMAT_VERSION,
    AvatarBundle,
    AvatarError,
    cli_main,
    decode_image,
    load_cached_bundle,
    register_avatar,
)
from realtime.render_fields import FIELDS


@pytest.fixture(scope="module")
def astronaut_png() -> bytes:
    return faces.encode(faces.astronaut())


@pytest.fixture(scope="module")
def bundle(astronaut_png) -> AvatarBundle:
    return register_avatar(astronaut_png)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_bundle_contents(bundle):
    h, w = bundle.image.shape[:2]
    assert (w, h) == (512, 512) and bundle.image.dtype == np.uint8
    assert bundle.landmarks.shape == (468, 3)
    assert bundle.fields.shape[0] == len(FIELDS) and bundle.fields.shape[-1] == 2
    assert np.isfinite(bundle.fields.astype(np.float32)).all()
    x0, y0, x1, y1 = bundle.roi
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    # the face (landmark box) lies inside the crop box, which lies inside the image
    cx0, cy0, cx1, cy1 = bundle.crop_box
    assert cx0 <= bundle.landmarks[:, 0].min() and bundle.landmarks[:, 0].max() <= cx1
    assert cy0 <= bundle.landmarks[:, 1].min() and bundle.landmarks[:, 1].max() <= cy1
    # the astronaut smiles with her teeth showing
    assert bundle.meta["photo_open"]
    # every motion control moves something
    for i, name in enumerate(FIELDS):
        assert np.abs(bundle.fields[i].astype(np.float32)).max() > 0.5, name


def test_key_depends_on_content_and_params(astronaut_png, bundle):
    again = register_avatar(astronaut_png)
    assert again.key == bundle.key
    assert register_avatar(astronaut_png, expand_ratio=0.3).key != bundle.key
    other = faces.encode(faces.glasses())
    assert register_avatar(other).key != bundle.key


def test_cache_roundtrip_and_corruption(tmp_path, astronaut_png):
    first = register_avatar(astronaut_png, cache_dir=tmp_path)
    path = tmp_path / f"{first.key}.npz"
    assert path.is_file()
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left no temp file
    loaded = load_cached_bundle(first.key, cache_dir=tmp_path)
    assert loaded is not None
    assert np.array_equal(loaded.image, first.image)
    assert np.array_equal(loaded.fields, first.fields)
    assert loaded.meta["gap0"] == pytest.approx(first.meta["gap0"])
    # truncated cache file: never trusted, rebuilt by the next registration
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert load_cached_bundle(first.key, cache_dir=tmp_path) is None
    rebuilt = register_avatar(astronaut_png, cache_dir=tmp_path)
    assert rebuilt.key == first.key and load_cached_bundle(first.key, cache_dir=tmp_path) is not None
    # garbage and unknown keys
    path.write_bytes(b"not a zip file")
    assert load_cached_bundle(first.key, cache_dir=tmp_path) is None
    assert load_cached_bundle("0" * 32, cache_dir=tmp_path) is None
    assert load_cached_bundle("../../etc/passwd", cache_dir=tmp_path) is None


def test_cache_rejects_wrong_arrays(tmp_path, astronaut_png):
    b = register_avatar(astronaut_png, cache_dir=tmp_path)
    path = tmp_path / f"{b.key}.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["fields"] = arrays["fields"][:3]  # wrong number of fields
    np.savez(path, **arrays)
    assert load_cached_bundle(b.key, cache_dir=tmp_path) is None
    assert FORMAT_VERSION >= 1


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"hello, this is text", "not_an_image"),
        (b"", "not_an_image"),
        (b"GIF89a" + b"\x00" * 100, "not_an_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "corrupt_image"),
        (b"\xff\xd8\xff\xe0" + b"\x13" * 300, "corrupt_image"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x01" * 100, "corrupt_image"),
    ],
)
def test_bad_bytes(data, code):
    with pytest.raises(AvatarError) as e:
        register_avatar(data)
    assert e.value.code == code


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_truncated(fmt):
    data = faces.encode(faces.astronaut(), fmt)
    with pytest.raises(AvatarError) as e:
        register_avatar(data[: len(data) // 2])
    assert e.value.code == "corrupt_image"


def test_huge_images():
    with pytest.raises(AvatarError) as e:
        register_avatar(_png_header_only(50_000, 50_000))
    assert e.value.code == "image_too_large"
    with pytest.raises(AvatarError) as e:
        register_avatar(faces.encode(faces.astronaut()), max_bytes=1000)
    assert e.value.code == "image_too_large"
    with pytest.raises(AvatarError) as e:
        register_avatar(faces.encode(faces.astronaut()), max_pixels=100_000)
    assert e.value.code == "image_too_large"


def test_tiny_image():
    tiny = faces.encode(np.full((40, 40, 3), 128, np.uint8))
    with pytest.raises(AvatarError) as e:
        register_avatar(tiny)
    assert e.value.code == "image_too_small"


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("png", "L"), ("jpeg", "L"), ("jpeg", "CMYK"), ("png", "RGBA"), ("webp", None), ("png", "P")],
)
def test_other_modes_are_converted(fmt, mode, bundle):
    data = faces.encode(faces.astronaut(), fmt, mode)
    got = register_avatar(data)
    assert got.image.shape == (512, 512, 3) and got.image.dtype == np.uint8
    # the same face is found, whatever the colour mode
    err = np.linalg.norm(got.landmarks[:, :2] - bundle.landmarks[:, :2], axis=1)
    assert np.median(err) < 0.05 * bundle.meta["eye_distance"]


def test_alpha_composited_over_white():
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:50, :, 3] = 255  # top half opaque red, bottom half fully transparent
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    rgb = decode_image(buf.getvalue())
    assert tuple(rgb[10, 10]) == (200, 0, 0)
    assert tuple(rgb[90, 10]) == (255, 255, 255)


def test_content_not_name(tmp_path, bundle):
    path = tmp_path / "portrait.jpg"  # a PNG under a JPEG name
    path.write_bytes(faces.encode(faces.astronaut(), "png"))
    assert register_avatar(path).image.shape == (512, 512, 3)
    fake = tmp_path / "fake.png"
    fake.write_text("definitely not a picture")
    with pytest.raises(AvatarError) as e:
        register_avatar(fake)
    assert e.value.code == "not_an_image"
    with pytest.raises(AvatarError) as e:
        register_avatar(tmp_path / "missing.png")
    assert e.value.code == "not_an_image"


def test_no_face():
    with pytest.raises(AvatarError) as e:
        register_avatar(faces.encode(faces.no_face()))
    assert e.value.code == "no_face"


def test_face_too_small():
    # the small face, but demanding more pixels between the eyes than it has (19)
    with pytest.raises(AvatarError) as e:
        register_avatar(faces.encode(faces.small_face()), min_eye_distance=40.0)
    assert e.value.code == "face_too_small"
    tiny = faces.small_face(canvas=1024, scale=0.25)
    with pytest.raises(AvatarError) as e:
        register_avatar(faces.encode(tiny))
    assert e.value.code in ("face_too_small", "no_face")


def test_small_face_registers():
    got = register_avatar(faces.encode(faces.small_face()))
    assert got.image.shape == (1024, 1024, 3)
    assert 12 < got.meta["eye_distance"] < 30


def test_two_faces():
    data = faces.encode(faces.two_faces())
    largest = register_avatar(data)
    assert largest.landmarks[:, 0].max() < 512  # the bigger, left face
    assert largest.meta["faces_found"] == 2
    with pytest.raises(AvatarError) as e:
        register_avatar(data, face="error")
    assert e.value.code == "multiple_faces"
    right = register_avatar(data, face=1)
    assert right.landmarks[:, 0].min() > 512
    assert register_avatar(data, face="0").landmarks[:, 0].max() < 512
    with pytest.raises(AvatarError) as e:
        register_avatar(data, face=5)
    assert e.value.code == "multiple_faces"
    with pytest.raises(ValueError):
        register_avatar(data, face="biggest")


def test_bad_expand_ratio(astronaut_png):
    for bad in (-0.1, 5.0, float("nan")):
        with pytest.raises(ValueError):
            register_avatar(astronaut_png, expand_ratio=bad)


def test_cli(tmp_path, capsys):
    img = tmp_path / "a.png"
    img.write_bytes(faces.encode(faces.astronaut()))
    assert cli_main([str(img), "--cache-dir", str(tmp_path / "cache"), "--expand-ratio", "0.2"]) == 0
    out = capsys.readouterr().out
    key = out.split()[1]
    assert (tmp_path / "cache" / f"{key}.npz").is_file()
    assert "ms" in out
    bad = tmp_path / "b.png"
    bad.write_bytes(b"nope")
    assert cli_main([str(bad), "--cache-dir", str(tmp_path / "cache")]) == 1
    assert "not_an_image" in capsys.readouterr().err
    assert cli_main([str(img), "--cache-dir", str(tmp_path / "cache"), "--expand-ratio", "0.2"]) == 0
    assert "from cache" in capsys.readouterr().out


def test_read_only_cache_dir_still_registers(tmp_path, astronaut_png):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # a cache "directory" that is a file cannot be written; registration must still succeed
    got = register_avatar(astronaut_png, cache_dir=Path(blocker))
    assert got.key


def test_sixteen_bit_grayscale(bundle):
    import io

    from PIL import Image

    gray16 = (faces.astronaut().mean(axis=2) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, format="PNG")
    got = register_avatar(buf.getvalue())
    assert got.image.dtype == np.uint8 and got.image.max() > 200
    assert abs(got.meta["eye_distance"] - bundle.meta["eye_distance"]) < 3


def test_exif_orientation_is_applied(bundle):
    import io

    from PIL import Image

    # pixels stored turned a quarter left, with the EXIF tag that says "turn right to view"
    stored = np.ascontiguousarray(np.rot90(faces.astronaut(), k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95, exif=exif)
    got = register_avatar(buf.getvalue())
    err = np.linalg.norm(got.landmarks[:, :2] - bundle.landmarks[:, :2], axis=1)
    assert np.median(err) < 0.08 * bundle.meta["eye_distance"]


def test_cache_bit_flip_is_caught(tmp_path, astronaut_png):
    b = register_avatar(astronaut_png, cache_dir=tmp_path)
    path = tmp_path / f"{b.key}.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the image array: only the zip CRC can tell
    path.write_bytes(bytes(data))
    assert load_cached_bundle(b.key, cache_dir=tmp_path) is None
    again = register_avatar(astronaut_png, cache_dir=tmp_path)  # rebuilt and re-cached
    assert np.array_equal(again.image, b.image)
    assert load_cached_bundle(b.key, cache_dir=tmp_path) is not None


def _only_avatar_errors(data: bytes) -> None:
    try:
        register_avatar(data)
    except AvatarError as e:
        assert e.code in ERROR_CODES


def test_fuzz_bytes_never_crash():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    png = faces.encode(faces.astronaut()[::4, ::4].copy())  # small, so decoding stays cheap
    jpeg = faces.encode(faces.astronaut()[::4, ::4].copy(), "jpeg")

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        base=st.sampled_from([png, jpeg, b"RIFF\x00\x00\x00\x00WEBPVP8 "]),
        cut=st.integers(min_value=0, max_value=4000),
        flips=st.lists(st.tuples(st.integers(0, 3999), st.integers(1, 255)), max_size=6),
        tail=st.binary(max_size=64),
    )
    def run(base: bytes, cut: int, flips: list[tuple[int, int]], tail: bytes) -> None:
        data = bytearray(base[: max(cut, 0)] if cut < len(base) else base)
        for pos, val in flips:
            if pos < len(data):
                data[pos] ^= val
        _only_avatar_errors(bytes(data) + tail)

    run()
