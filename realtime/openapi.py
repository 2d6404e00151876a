"""The OpenAPI 3 description of the HTTP API, served at ``/openapi.json``.

Written by hand so that it documents intent (limits, error shapes, auth) and not
only shapes; ``tests/test_ops.py`` checks it against the routes the app really has.
"""

from __future__ import annotations

from typing import Any

from realtime.config import Config
from realtime.motion import CONTROL_RANGES

JSON = "application/json"

ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": ERROR}}}
    if retry_after:
        out["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    return out


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


UNAUTHORIZED = _error("Missing or wrong bearer token (only when server.auth_token is set)")
TOO_LARGE = _error("Request body over the size limit")
BAD_REQUEST = _error("Malformed request or parameter out of range")
NOT_FOUND = _error("No such resource")
BUSY = _error("At capacity (max sessions or job queue full)", retry_after=True)
RATE_LIMITED = _error(
    "Too many session creations from this client (its address, or behind a trusted proxy the"
    " X-Forwarded-For client)",
    retry_after=True,
)


def _controls_schema(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The motion controls with the seed API's names and ranges; unknown keys are refused (400)."""
    integers = ("inference_steps", "seed")
    props: dict[str, Any] = {
        name: {"type": "integer" if name in integers else "number", "minimum": lo, "maximum": hi}
        for name, (lo, hi) in CONTROL_RANGES.items()
    }
    props["align_mouth"]["description"] = "ms"
    props["fps"] = {"type": "integer", "enum": [25, 30]}
    props.update(extra or {})
    return {"type": "object", "additionalProperties": False, "properties": props}


def _live_params() -> dict[str, Any]:
    return _controls_schema(
        {
            "resolution": {"type": "integer", "minimum": 256, "maximum": 1024},
            "avatar": {"type": "string", "minLength": 1, "maxLength": 128},
        }
    )


def _generate_config() -> dict[str, Any]:
    return _controls_schema(
        {
            "duration": {"type": "number", "exclusiveMinimum": 0, "nullable": True},
            "min_resolution": {"type": "integer", "minimum": 256, "maximum": 1024},
            "expand_ratio": {"type": "number", "minimum": 0, "maximum": 0.5},
        }
    )


def build_spec(config: Config) -> dict[str, Any]:
    """The whole API as an OpenAPI 3.0 document."""
    from realtime.ops import MAX_SDP_BYTES

    bearer = [{"bearer": []}] if config.server.auth_token else []
    session_id = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "The browser client",
                "security": [],
                "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers",
                "security": [],
                "responses": {"200": _json("Alive", {"$ref": "#/components/schemas/Health"})},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: models loaded and warmed",
                "security": [],
                "responses": {
                    "200": _json("Ready", {"$ref": "#/components/schemas/Ready"}),
                    "503": _json("Still loading", {"$ref": "#/components/schemas/Ready"}),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "security": [],
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": _json("OpenAPI 3 document", {"type": "object"})},
            }
        },
        "/offer": {
            "post": {
                "summary": "Start a live session: WebRTC offer in, answer out",
                "description": (
                    "The offer must contain an audio m-line (the avatar is driven by the peer's audio). "
                    f"SDP at most {MAX_SDP_BYTES} bytes. Rate-limited per client address."
                ),
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/Offer"}}},
                },
                "responses": {
                    "200": _json("Answer", {"$ref": "#/components/schemas/Answer"}),
                    "400": _error("Malformed offer, no audio m-line, bad params, or unknown avatar"),
                    "401": UNAUTHORIZED,
                    "403": _error("Origin not in server.cors_origins"),
                    "413": _error("SDP or body over the size limit"),
                    "429": RATE_LIMITED,
                    "503": BUSY,
                },
            }
        },
        "/sessions": {
            "get": {
                "summary": "Live sessions now open",
                "responses": {
                    "200": _json("Sessions", {"$ref": "#/components/schemas/SessionList"}),
                    "401": UNAUTHORIZED,
                },
            }
        },
        "/sessions/{session_id}": {
            "parameters": [session_id],
            "get": {
                "summary": "One session's state and counters (fps, drops, latency)",
                "responses": {
                    "200": _json("Session", {"$ref": "#/components/schemas/Session"}),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                },
            },
            "delete": {
                "summary": "Close a session and free everything it holds",
                "responses": {
                    "200": _json(
                        "Closed",
                        {
                            "type": "object",
                            "properties": {"session_id": {"type": "string"}, "closed": {"type": "boolean"}},
                        },
                    ),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                },
            },
        },
        "/api/avatars": {
            "post": {
                "summary": "Register a portrait; returns the avatar key to use in /offer",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["image"],
                                "properties": {
                                    "image": {"type": "string", "format": "binary"},
                                    "expand_ratio": {"type": "number", "minimum": 0, "maximum": 1},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json("Registered", {"$ref": "#/components/schemas/Avatar"}),
                    "400": _error("Not multipart, no image, or not a usable portrait (see code)"),
                    "401": UNAUTHORIZED,
                    "413": TOO_LARGE,
                },
            }
        },
        "/api/sonic/generate": {
            "post": {
                "summary": "Offline generation (Sonic-compatible): audio + image -> MP4",
                "parameters": [
                    {
                        "name": "async",
                        "in": "query",
                        "required": False,
                        "description": "1/true: answer 202 with a job id at once instead of waiting",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["audio", "image"],
                                "properties": {
                                    "audio": {"type": "string", "format": "binary"},
                                    "image": {"type": "string", "format": "binary"},
                                    "config": {
                                        "type": "string",
                                        "description": "JSON object, see GenerateConfig",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json("Generated", {"$ref": "#/components/schemas/GenerateResult"}),
                    "202": _json("Accepted (?async=1)", {"$ref": "#/components/schemas/JobAccepted"}),
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "413": _error("Body, audio (bytes or seconds) or image over the limit"),
                    "415": _error("The audio or image is not a supported format"),
                    "422": _error("Unusable input (no face, undecodable audio...)"),
                    "500": _error("The job failed inside the pipeline (a server fault)"),
                    "503": BUSY,
                },
            }
        },
        "/api/jobs/{job_id}": {
            "parameters": [job_id],
            "get": {
                "summary": "An offline job's status and progress",
                "responses": {
                    "200": _json("Job", {"$ref": "#/components/schemas/Job"}),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                },
            },
            "delete": {
                "summary": "Cancel a queued or running job",
                "responses": {
                    "202": _json("Cancelled", {"$ref": "#/components/schemas/Job"}),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                    "409": _json("Already finished", {"$ref": "#/components/schemas/Job"}),
                },
            },
        },
        "/api/jobs/{job_id}/events": {
            "parameters": [job_id],
            "get": {
                "summary": "Server-sent events: progress, then done / failed / cancelled",
                "responses": {
                    "200": {"description": "Event stream", "content": {"text/event-stream": {}}},
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                    "429": _error(
                        "This client already holds offline.max_event_streams_per_client open streams"
                        " (code too_many_streams)",
                        retry_after=True,
                    ),
                },
            },
        },
        "/output/{name}": {
            "get": {
                "summary": "A generated video (unguessable name, no token needed)",
                "security": [],
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "MP4 video", "content": {"video/mp4": {}}},
                    "206": {"description": "Part of the MP4 (Range request)", "content": {"video/mp4": {}}},
                    "404": NOT_FOUND,
                    "416": _error("Range not satisfiable"),
                },
            }
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Real-time talking-avatar server",
            "version": "0.1.0",
            "description": "Live WebRTC avatar sessions and Sonic-compatible offline generation. "
            "Every error is JSON: {success: false, error}.",
        },
        "servers": [{"url": "/"}],
        "security": bearer,
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
    }


def _schemas() -> dict[str, Any]:
    from realtime.ops import MAX_SDP_BYTES

    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"success": {"type": "boolean"}, "error": {"type": "string"}},
        },
        "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
        "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "Offer": {
            "type": "object",
            "required": ["sdp", "type"],
            "properties": {
                "sdp": {
                    "type": "string",
                    # The 64 KB limit is stated, not encoded as maxLength: over it the answer is 413,
                    # which schema-driven fuzzers (schemathesis) do not expect for schema violations.
                    "description": f"SDP offer (at most {MAX_SDP_BYTES} bytes, else 413) with an audio m-line",
                    "minLength": 1,
                    "pattern": "^v=0\\r?\\n[\\s\\S]*m=audio ",
                },
                "type": {"type": "string", "enum": ["offer"]},
                "avatar": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 128,
                    "description": "'default' or a key from /api/avatars",
                },
                "params": _live_params(),
            },
        },
        "Answer": {
            "type": "object",
            "required": ["sdp", "type", "session_id"],
            "properties": {
                "sdp": {"type": "string"},
                "type": {"type": "string", "enum": ["answer"]},
                "session_id": {"type": "string"},
            },
        },
        "Session": {
            "type": "object",
            "required": ["session_id", "state"],
            "properties": {
                "session_id": {"type": "string"},
                "state": {"type": "string"},
                "connection": {"type": "string"},
                "params": {"type": "object"},
                "frames_sent": {"type": "integer"},
                "frames_dropped": {"type": "integer"},
                "frames_sent_late": {"type": "integer"},
                "first_frame_s": {"type": "number", "nullable": True},
                "frames_dropped_by_cause": {
                    "type": "object",
                    "description": "repeated frames by cause: input (audio late), compute, send",
                    "additionalProperties": {"type": "integer"},
                },
                "frame_slack_ms": {
                    "type": "object",
                    "nullable": True,
                    "description": "p1/p5/p50 of how early frames were ready before their send time",
                    "additionalProperties": {"type": "number"},
                },
                "audio_packets_late": {
                    "type": "integer",
                    "nullable": True,
                    "description": "peer audio packets dropped for arriving after a newer one (their 20 ms are silence)",
                },
                "audio_decoder": {
                    "type": "string",
                    "enum": ["inline", "aiortc"],
                    "description": "inline: the peer's audio is decoded on the session's event loop as it arrives",
                },
                "audio_decode_errors": {
                    "type": "integer",
                    "nullable": True,
                    "description": "peer audio packets the decoder rejected (their 20 ms are silence)",
                },
                "frames_idle": {
                    "type": "integer",
                    "nullable": True,
                    "description": "motion frames made deep in pauses without the denoiser (cheaper)",
                },
                "pipeline_delay_ms": {
                    "type": "number",
                    "description": "the playout delay now (model lookahead + the adaptive margin)",
                },
                "pipeline_delay_range_ms": {
                    "type": "array",
                    "items": {"type": "number"},
                    "description": "[lowest, highest]: live.latency_margin_ms and latency_margin_max_ms",
                },
                "pipeline_delay_max_ms": {"type": "number"},
                "pipeline_delay_changes": {
                    "type": "object",
                    "description": "how often the delay was raised (frames late) and lowered",
                    "additionalProperties": {"type": "integer"},
                },
                "pipeline_delay_history": {
                    "type": "array",
                    "description": "the latest changes, [timeline seconds, new delay ms]",
                    "items": {"type": "array", "items": {"type": "number"}},
                },
                "video_encoder": {"type": "string", "nullable": True},
                "video_target_kbps": {
                    "type": "integer",
                    "nullable": True,
                    "description": "the VP8 target bitrate: the peer's estimate, capped by live.max_video_kbps",
                },
                "audio_encoder": {"type": "string", "enum": ["opus-mono", "aiortc"]},
                "worker": {"type": "integer", "description": "the live worker process (server.workers > 0)"},
            },
        },
        "SessionList": {
            "type": "object",
            "required": ["sessions", "max_sessions"],
            "properties": {
                "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}},
                "max_sessions": {"type": "integer"},
                "workers": {
                    "type": "array",
                    "description": "the live worker processes (only when server.workers > 0)",
                    "items": {
                        "type": "object",
                        "properties": {
                            "index": {"type": "integer"},
                            "pid": {"type": "integer", "nullable": True},
                            "ready": {"type": "boolean"},
                            "sessions": {"type": "integer", "nullable": True},
                            "restarts": {"type": "integer"},
                        },
                    },
                },
            },
        },
        "Avatar": {
            "type": "object",
            "required": ["avatar"],
            "properties": {
                "success": {"type": "boolean"},
                "avatar": {"type": "string", "description": "key for /offer's 'avatar'"},
                "width": {"type": "integer"},
                "height": {"type": "integer"},
                "expand_ratio": {"type": "number"},
            },
        },
        "GenerateConfig": _generate_config(),
        "GenerateResult": {
            "type": "object",
            "required": ["success"],
            "properties": {
                "success": {"type": "boolean"},
                "video_url": {"type": "string"},
                "output_path": {"type": "string"},
            },
        },
        "JobAccepted": {
            "type": "object",
            "properties": {
                "success": {"type": "boolean"},
                "job_id": {"type": "string"},
                "status": {"type": "string"},
                "status_url": {"type": "string"},
                "events_url": {"type": "string"},
            },
        },
        "Job": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {
                "id": {"type": "string"},
                "status": {"type": "string"},
                "progress": {"type": "number"},
                "stage": {"type": "string", "nullable": True},
                "error": {"type": "string"},
                "code": {"type": "string", "nullable": True},
                "video_url": {"type": "string"},
                "output_path": {"type": "string"},
            },
        },
    }
