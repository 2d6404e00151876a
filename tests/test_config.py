from pathlib import Path

import pytest

from realtime.config import ConfigError, load_config
from realtime.motion import CHANNELS, N_CHANNELS, MotionFrame, clip_motion, neutral


def test_shipped_config_loads() -> None:
    cfg = load_config(env={})
    assert cfg.server.port == 8080
    assert cfg.server.ice_servers == ()
    assert cfg.live.fps == 25


def test_env_and_cli_overrides_take_precedence() -> None:
    cfg = load_config(
        env={"AVATAR_SERVER_PORT": "9000", "AVATAR_LIVE_FPS": "30"}, overrides=["server.port=9100"]
    )
    assert cfg.server.port == 9100
    assert cfg.live.fps == 30


def test_bad_values_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server.port"):
        load_config(env={"AVATAR_SERVER_PORT": "eighty"})
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(overrides=["server.nope=1"], env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="model.precision must be auto, fp32 or int8"):
        load_config(overrides=["model.precision=fp16"], env={})
    with pytest.raises(ConfigError, match="live.max_video_kbps must be 0"):
        load_config(overrides=["live.max_video_kbps=100"], env={})
    with pytest.raises(ConfigError, match="model.backend"):
        load_config(overrides=["model.backend=tpu"], env={})
    with pytest.raises(ConfigError, match="live.latency_margin_ms <= live.latency_margin_max_ms"):
        load_config(overrides=["live.latency_margin_max_ms=30"], env={})  # below the 50 ms margin


def test_motion_frame_contract() -> None:
    assert len(CHANNELS) == N_CHANNELS == len(set(CHANNELS))
    v = neutral()
    v[0] = float("nan")
    v[-1] = 99.0
    clipped = clip_motion(v)
    assert clipped[0] == 0.0 and clipped[-1] <= 12.0
    frame = MotionFrame(index=3, values=clipped)
    assert set(frame.to_dict()) == set(CHANNELS)
    assert frame["jawOpen"] == 0.0


def test_control_ranges_have_one_owner() -> None:
    """Generator, live session params and offline config accept and refuse the same values."""
    from realtime.config import LiveConfig
    from realtime.generator import MotionControls
    from realtime.motion import CONTROL_RANGES
    from realtime.offline import GenerateParams
    from realtime.offline import ParamError as OfflineError
    from realtime.sampling import MAX_STEPS
    from realtime.session import ParamError as LiveError
    from realtime.session import SessionParams

    assert CONTROL_RANGES["inference_steps"] == (1, MAX_STEPS)
    for name, (lo, hi) in CONTROL_RANGES.items():
        for ok in (lo, hi):
            MotionControls(**{name: ok}).validated()
            SessionParams.from_request({name: ok}, LiveConfig())
            GenerateParams.from_mapping({name: ok})
        bad = hi + 1
        with pytest.raises(ValueError, match=name):
            MotionControls(**{name: bad}).validated()
        with pytest.raises(LiveError, match=name):
            SessionParams.from_request({name: bad}, LiveConfig())
        with pytest.raises(OfflineError, match=name):
            GenerateParams.from_mapping({name: bad})
