"""Fetch the MediaPipe face-mesh models from PyPI's mediapipe==0.10.21 wheel.

The models are Apache-2.0 (see NOTICE). Later mediapipe releases no longer ship
them, and installing that mediapipe would force numpy<2, so we only download the
wheel, extract the files and verify their SHA-256. Nothing is fetched at run time.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "models" / "facemesh"
WHEEL_REQ = "mediapipe==0.10.21"
FILES = {
    "mediapipe/modules/face_detection/face_detection_short_range.tflite": (
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
    ),
    "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite": (
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1"
    ),
    "mediapipe/modules/face_landmark/face_landmark.tflite": (
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"
    ),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def have_all() -> bool:
    return all(
        (DEST / Path(name).name).exists() and _sha256(DEST / Path(name).name) == digest
        for name, digest in FILES.items()
    )


def main() -> int:
    if have_all():
        print(f"face-mesh models present and verified in {DEST}")
        return 0
    DEST.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL_REQ]
        cmd += ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("mediapipe-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name, digest in FILES.items():
                data = zf.read(name)
                got = hashlib.sha256(data).hexdigest()
                if got != digest:
                    print(f"checksum mismatch for {name}: {got} != {digest}", file=sys.stderr)
                    return 1
                (DEST / Path(name).name).write_bytes(data)
    print(f"face-mesh models fetched and verified in {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
