"""The live VP8 settings on real rendered frames: decodable, faithful in the face, within the bitrate."""

from __future__ import annotations

import pytest

from realtime.benchmarks.encode import AIORTC_OPTIONS, encode_run, render_frames
from realtime.tracks import AvatarVp8Encoder


@pytest.fixture(scope="module")
def frames() -> tuple[list, tuple[int, int, int, int]]:
    return render_frames(60)


@pytest.mark.parametrize("kbps", [500, 1500])
def test_shipped_vp8_settings_keep_the_face(
    frames: tuple[list, tuple[int, int, int, int]], kbps: int
) -> None:
    planes, box = frames
    ours = encode_run(planes, box, kbps * 1000, AvatarVp8Encoder.OPTIONS)
    no_skip = encode_run(planes, box, kbps * 1000, {**AvatarVp8Encoder.OPTIONS, "static-thresh": "1"})
    aiortc = encode_run(planes, box, kbps * 1000, AIORTC_OPTIONS)
    # static-thresh skips blocks that barely changed: the face must still come through, every frame
    assert ours["psnr_region_db"] >= no_skip["psnr_region_db"] - 1.5, (ours, no_skip)
    assert ours["psnr_region_worst_db"] >= no_skip["psnr_region_worst_db"] - 0.5, (ours, no_skip)
    assert ours["psnr_region_db"] >= aiortc["psnr_region_db"], (ours, aiortc)
    assert ours["kbps"] <= kbps * 1.15, ours  # CBR: no overshoot past the REMB target


def test_bench_encode_cli(tmp_path, capsys) -> None:
    import json

    from realtime.benchmarks import cli_main

    out = tmp_path / "encode.json"
    args = ["encode", "--frames", "14", "--bitrates", "500", "--static-thresh", "1,500", "--json", str(out)]
    assert cli_main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["aiortc", "ours, static-thresh 1", "ours, static-thresh 500"]
    assert all(r["kbps"] > 0 and r["encode_ms_median"] > 0 for r in rows)
    assert "| 500 kb/s | aiortc |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["encode", "--bitrates", "fast"])


def test_bitrate_cap_holds_against_the_peers_estimate() -> None:
    """live.max_video_kbps: every REMB the peer sends sets target_bitrate; the cap must win."""
    capped, free = AvatarVp8Encoder(max_bitrate=400_000), AvatarVp8Encoder()
    assert capped.target_bitrate <= 400_000
    for bitrate in (300_000, 1_500_000, 900_000):  # what aiortc assigns from REMB packets
        capped.target_bitrate = free.target_bitrate = bitrate
        assert capped.target_bitrate == min(bitrate, 400_000)
        assert free.target_bitrate == bitrate
