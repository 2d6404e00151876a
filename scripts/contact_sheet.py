"""Render the contact sheet: test portraits (rows) x visemes, blinks, brows and head poses (columns).

    python scripts/contact_sheet.py [--out docs/contact_sheet.png] [--tile 144] [--resolution 512]

This is how people judge the renderer: look at it after every change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from realtime.avatar import register_avatar  # noqa: E402
from realtime.motion import idx, neutral  # noqa: E402
from realtime.renderer import PortraitRenderer  # noqa: E402

# Viseme-like presets in ARKit channels (what a speech-driven motion stream produces).
POSES: list[tuple[str, dict[str, float]]] = [
    ("rest", {}),
    ("aa", {"jawOpen": 0.55, "mouthLowerDownLeft": 0.3, "mouthLowerDownRight": 0.3}),
    (
        "ee",
        {
            "jawOpen": 0.15,
            "mouthStretchLeft": 0.6,
            "mouthStretchRight": 0.6,
            "mouthSmileLeft": 0.3,
            "mouthSmileRight": 0.3,
        },
    ),
    ("oo", {"jawOpen": 0.2, "mouthPucker": 0.9, "mouthFunnel": 0.5}),
    ("p/b/m", {"jawOpen": 0.05, "mouthClose": 0.3, "mouthPressLeft": 0.8, "mouthPressRight": 0.8}),
    ("f/v", {"jawOpen": 0.12, "mouthUpperUpLeft": 0.5, "mouthUpperUpRight": 0.5, "mouthClose": 0.4}),
    ("blink", {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}),
    ("brows", {"browInnerUp": 1.0, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8}),
    ("yaw +10", {"headYaw": 10.0}),
    ("yaw -10", {"headYaw": -10.0}),
    ("pitch +8", {"headPitch": 8.0}),
    ("roll +8", {"headRoll": 8.0}),
]


def motion(values: dict[str, float]) -> np.ndarray:
    m = neutral()
    for name, v in values.items():
        m[idx(name)] = v
    return m


def portraits() -> list[tuple[str, np.ndarray]]:
    import faces

    return [
        ("astronaut", faces.astronaut()),
        ("closed mouth", faces.closed_mouth()),
        ("glasses", faces.glasses()),
        ("rotated 20", faces.rotated()),
        ("small face", faces.small_face()),
    ]


def _crop(frame: np.ndarray, renderer: PortraitRenderer, tile: int) -> np.ndarray:
    b = renderer.bundle
    sx = renderer.size[0] / b.image.shape[1]
    lm = b.landmarks[:, :2] * sx
    c = (lm.min(0) + lm.max(0)) / 2
    side = 1.9 * float((lm.max(0) - lm.min(0)).max())
    x0, y0 = int(round(c[0] - side / 2)), int(round(c[1] - side / 2 + 0.05 * side))
    s = int(round(side))
    pad = cv2.copyMakeBorder(frame, s, s, s, s, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    crop = pad[y0 + s : y0 + 2 * s, x0 + s : x0 + 2 * s]
    return cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_AREA if s > tile else cv2.INTER_CUBIC)


def _label(text: str, width: int, height: int = 22) -> np.ndarray:
    img = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(img, text, (4, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (30, 30, 30), 1, cv2.LINE_AA)
    return img


def build_sheet(tile: int = 144, resolution: int = 512) -> np.ndarray:
    """The sheet as an RGB array."""
    label_w = 110
    header = [_label("", label_w), _label("photo", tile)] + [_label(n, tile) for n, _ in POSES]
    rows = [np.concatenate(header, axis=1)]
    for name, img in portraits():
        from faces import encode

        bundle = register_avatar(encode(img))
        r = PortraitRenderer(bundle, resolution)
        tiles = [_crop(r.background, r, tile)]
        tiles += [_crop(r.render(motion(values)), r, tile) for _, values in POSES]
        lab = np.full((tile, label_w, 3), 255, np.uint8)
        cv2.putText(lab, name, (4, tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (30, 30, 30), 1, cv2.LINE_AA)
        rows.append(np.concatenate([lab] + tiles, axis=1))
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "contact_sheet.png"))
    ap.add_argument("--tile", type=int, default=144)
    ap.add_argument("--resolution", type=int, default=512)
    args = ap.parse_args(argv)
    sheet = build_sheet(args.tile, args.resolution)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {sheet.shape[1]}x{sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
