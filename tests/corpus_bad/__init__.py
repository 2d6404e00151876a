"""A corpus of hostile inputs, generated in code: malformed SDPs, corrupt media, hostile names.

Used by ``tests/test_fuzz.py`` and ``avatar bench load --fuzz``. Deterministic: the same
bytes every run, so a failure reproduces.
"""

from __future__ import annotations

import io
import random
import struct
import wave
import zlib
from functools import cache

import numpy as np

CRLF = "\r\n"

# A real aiortc offer (audio sendrecv + video recvonly), host candidates on TEST-NET addresses.
VALID_OFFER = CRLF.join(
    [
        "v=0",
        "o=- 4004231580 4004231580 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS *",
        "m=audio 45205 UDP/TLS/RTP/SAVPF 96 9 0 8",
        "c=IN IP4 192.0.2.2",
        "a=sendrecv",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=mid:0",
        "a=msid:bc50040b-66d1-4264-bd24-507583c0425f d8d06a72-e0e3-4bb7-869d-af27619b906f",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        "a=ssrc:2953845085 cname:5d4e0c4c-f530-4aa2-accb-0c3e301e606c",
        "a=rtpmap:96 opus/48000/2",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 192.0.2.2 45205 typ host",
        "a=end-of-candidates",
        "a=ice-ufrag:DRwd",
        "a=ice-pwd:KTM0z3zt7roEtbCbGplwqy",
        "a=fingerprint:sha-256 9B:C2:19:C1:96:AE:40:89:ED:A2:15:6E:49:0D:22:20:07:83:70:E0:0D:05:B2:8E:8F:7B:E5:03:85:06:32:44",
        "a=setup:actpass",
        "m=video 35253 UDP/TLS/RTP/SAVPF 97 98",
        "c=IN IP4 192.0.2.2",
        "a=recvonly",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=mid:1",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        "a=ssrc-group:FID 3512903784 3214043483",
        "a=ssrc:3512903784 cname:5d4e0c4c-f530-4aa2-accb-0c3e301e606c",
        "a=ssrc:3214043483 cname:5d4e0c4c-f530-4aa2-accb-0c3e301e606c",
        "a=rtpmap:97 VP8/90000",
        "a=rtcp-fb:97 nack",
        "a=rtcp-fb:97 nack pli",
        "a=rtcp-fb:97 goog-remb",
        "a=rtpmap:98 rtx/90000",
        "a=fmtp:98 apt=97",
        "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 192.0.2.2 35253 typ host",
        "a=end-of-candidates",
        "a=ice-ufrag:DRwd",
        "a=ice-pwd:KTM0z3zt7roEtbCbGplwqy",
        "a=fingerprint:sha-256 9B:C2:19:C1:96:AE:40:89:ED:A2:15:6E:49:0D:22:20:07:83:70:E0:0D:05:B2:8E:8F:7B:E5:03:85:06:32:44",
        "a=setup:actpass",
        "",
    ]
)


def _replace(sdp: str, old: str, new: str) -> str:
    assert old in sdp, old
    return sdp.replace(old, new)


def _drop(sdp: str, prefix: str) -> str:
    return CRLF.join(ln for ln in sdp.split(CRLF) if not ln.startswith(prefix))


def malformed_sdps() -> dict[str, str]:
    """Named offers that are broken in one way each; all pass a naive ``"m=audio" in sdp`` test."""
    v = VALID_OFFER
    audio_only = v.split("m=video")[0]
    return {
        "audio_port_not_a_number": _replace(v, "m=audio 45205", "m=audio abc"),
        "audio_no_formats": _replace(
            v, "m=audio 45205 UDP/TLS/RTP/SAVPF 96 9 0 8", "m=audio 45205 UDP/TLS/RTP/SAVPF"
        ),
        "audio_payload_type_out_of_range": _replace(v, "SAVPF 96 9 0 8", "SAVPF 300 -1"),
        "audio_unknown_codec_only": _replace(
            _drop(_drop(_drop(v, "a=rtpmap:9 "), "a=rtpmap:0 "), "a=rtpmap:8 "),
            "opus/48000/2",
            "nonsense/0/0",
        ).replace("SAVPF 96 9 0 8", "SAVPF 96"),
        "rtpmap_bad_clock": _replace(v, "opus/48000/2", "opus/fast/two"),
        "no_fingerprint": _drop(v, "a=fingerprint"),
        "bad_fingerprint": v.replace("sha-256 9B:C2", "sha-999 ZZ:C2"),
        "no_ice_credentials": _drop(_drop(v, "a=ice-ufrag"), "a=ice-pwd"),
        "bad_setup_role": v.replace("a=setup:actpass", "a=setup:sideways"),
        "bad_candidate": v.replace("typ host", "typ").replace("2130706431", "-5"),
        "bad_connection_line": v.replace("c=IN IP4 192.0.2.2", "c=IN IP9 not-an-ip"),
        "bundle_unknown_mid": v.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 7 8 9"),
        "duplicate_mid": v.replace("a=mid:1", "a=mid:0"),
        "huge_ssrc": v.replace("a=ssrc:2953845085", "a=ssrc:99999999999999999999"),
        "rtcp_mux_missing": _drop(v, "a=rtcp-mux"),
        "direction_inactive": v.replace("a=sendrecv", "a=inactive"),
        "audio_port_zero": v.replace("m=audio 45205", "m=audio 0"),
        "many_audio_lines": audio_only + CRLF.join(["m=audio 9 UDP/TLS/RTP/SAVPF 96"] * 600) + CRLF,
        "long_attribute": v.replace("a=sendrecv", "a=sendrecv" + CRLF + "a=x-long:" + "A" * 50_000),
        "lf_only_line_endings": v.replace(CRLF, "\n"),
        "bare_cr_line_endings": v.replace(CRLF, "\r"),
        "unicode_garbage": v.replace("s=-", "s=\u202e\U0001f600\ufffd\u0000x"),
        "truncated_half": v[: len(v) // 2],
        "truncated_in_audio": v[: v.index("a=rtpmap:96") + 12],
        "version_only_plus_audio": "v=0" + CRLF + "m=audio 9 RTP/AVP 0" + CRLF,
        "rtp_avp_plain": v.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"),
        "fmtp_garbage": v.replace("a=fmtp:98 apt=97", "a=fmtp:98 apt=;;;==="),
        "extmap_bad": v.replace("a=extmap:1 urn", "a=extmap:999999999999 urn"),
    }


def hostile_names() -> list[str]:
    """File names and ids that must never escape a directory, crash a path join, or be echoed raw."""
    return [
        "../../etc/passwd",
        "..\\..\\windows\\win.ini",
        "/etc/passwd",
        "....//....//etc/passwd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "a\x00.png",
        "\x00",
        "x" * 5000 + ".png",
        "\u202egnp.exe",
        "名前.png",
        "😀😀😀.wav",
        "con",
        "NUL.mp4",
        " ",
        ".",
        "..",
        "a/b/c.mp4",
        'name with spaces and "quotes".png',
        "semi;colon=1.png",
        "\r\nX-Injected: 1",
        "default",
        "",
    ]


# -- media -------------------------------------------------------------------------


def _png(width: int, height: int, channels: int = 3, raw: bytes | None = None) -> bytes:
    """A minimal PNG; ``raw`` is the filtered scanline data (zeros by default)."""
    color = {1: 0, 3: 2}[channels]
    if raw is None:
        raw = b"\x00" * ((width * channels + 1) * height)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


@cache
def good_media() -> dict[str, bytes]:
    """Small valid files of each kind the server accepts (images have no face)."""
    import av
    import cv2

    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    out: dict[str, bytes] = {}
    for ext in ("png", "jpg", "webp"):
        ok, buf = cv2.imencode("." + ext, img)
        assert ok
        out[ext] = buf.tobytes()
    t = np.arange(8000) / 16000.0
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    bio = io.BytesIO()
    with wave.open(bio, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(16000)
        wf.writeframes(pcm.tobytes())
    out["wav"] = bio.getvalue()
    for ext, codec, rate in (("mp3", "libmp3lame", 16000), ("ogg", "libopus", 48000)):
        bio = io.BytesIO()
        with av.open(bio, "w", format=ext) as container:
            stream = container.add_stream(codec, rate=rate)
            stream.layout = "mono"
            # Opus only takes 48 kHz: upsample by repetition (the content does not matter).
            samples = np.repeat(pcm, rate // 16000).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        out[ext] = bio.getvalue()
    return out


def _wav_header(rate: int, channels: int, width: int, data_len: int, fmt: int = 1) -> bytes:
    block = channels * width
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_len)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, fmt, channels, rate, rate * block, block, width * 8)
        + b"data"
        + struct.pack("<I", data_len)
    )


@cache
def corrupt_media() -> dict[str, bytes]:
    """Named broken files: truncations, bit flips, lies in headers, wrong types, empty files."""
    rng = random.Random(1234)
    out: dict[str, bytes] = {"empty": b"", "one_byte": b"\x89", "text": b"hello, I am not media\n"}
    for ext, data in good_media().items():
        for frac in (0.01, 0.1, 0.5, 0.9):
            out[f"{ext}_truncated_{int(frac * 100)}pct"] = data[: max(1, int(len(data) * frac))]
        out[f"{ext}_minus_one"] = data[:-1]
        for i in range(3):
            flipped = bytearray(data)
            for _ in range(8 if i else 1):
                pos = rng.randrange(min(len(flipped), 64) if i == 0 else len(flipped))
                flipped[pos] ^= 1 << rng.randrange(8)
            out[f"{ext}_bitflip_{i}"] = bytes(flipped)
        out[f"{ext}_header_only"] = data[:32]
        out[f"{ext}_doubled"] = data + data
    out["png_zero_size"] = _png(0, 0)
    out["png_1x1"] = _png(1, 1)
    out["png_huge_claimed_dims_tiny_data"] = _png(60000, 60000, 1, raw=b"\x00" * 100)
    out["png_bad_crc"] = _png(8, 8)[:-5] + b"\x00\x00\x00\x00\x00"
    out["wav_zero_channels"] = _wav_header(16000, 0, 2, 4) + b"\x00" * 4
    out["wav_zero_rate"] = _wav_header(0, 1, 2, 4) + b"\x00" * 4
    out["wav_data_len_lies"] = _wav_header(16000, 1, 2, 0x7FFFFFF0) + b"\x00" * 100
    out["wav_no_samples"] = _wav_header(16000, 1, 2, 0)
    out["wav_one_sample"] = _wav_header(16000, 1, 2, 2) + b"\x01\x00"
    out["wav_float32_nan"] = _wav_header(16000, 1, 4, 400, fmt=3) + np.full(100, np.nan, "<f4").tobytes()
    out["wav_float32_inf"] = _wav_header(16000, 1, 4, 400, fmt=3) + np.full(100, np.inf, "<f4").tobytes()
    out["wav_8_channels"] = _wav_header(16000, 8, 2, 1600) + b"\x00" * 1600
    out["wav_rate_1hz"] = _wav_header(1, 1, 2, 20) + b"\x00" * 20
    out["wav_rate_huge"] = _wav_header(2_000_000_000, 1, 2, 20) + b"\x00" * 20
    out["wav_as_png"] = good_media()["wav"]  # sent with an image name/type
    out["png_as_wav"] = good_media()["png"]
    out["riff_not_wave"] = b"RIFF\x10\x00\x00\x00AVI LIST" + b"\x00" * 8
    out["jpeg_soi_only"] = b"\xff\xd8\xff"
    out["gif"] = (
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )
    out["svg_xxe"] = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><svg>&e;</svg>'
    )
    out["zip_bomb_header"] = b"PK\x03\x04" + b"\x00" * 26
    return out


def decompression_bomb_png(side: int = 12000) -> bytes:
    """A grey PNG that is ~100 KB on the wire and ``side``^2 pixels decoded (an image-size limit test)."""
    row = b"\x00" * (side + 1)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
