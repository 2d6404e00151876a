"""The OpenAPI 3 description of the HTTP API, served at ``/openapi.json``.

Written by hand so that it documents intent (limits, error shapes, auth) and not
only shapes; ``tests/test_ops.py`` checks it against the routes the app really has.
"""

from __future__ import annotations

from typing import Any

from realtime.config import Config

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
RATE_LIMITED = _error("Too many session creations from this address", retry_after=True)


def _controls_schema() -> dict[str, Any]:
    """The motion controls, with the seed API's names and ranges (``MotionControls.validated``)."""
    return {
        "type": "object",
        "additionalProperties": True,
        "properties": {
            "inference_steps": {"type": "integer", "minimum": 1, "maximum": 8},
            "dynamic_scale": {"type": "number", "minimum": 0, "maximum": 2},
            "motion_scale": {"type": "number", "minimum": 0, "maximum": 2},
            "smooth_motion": {"type": "number", "minimum": 0, "maximum": 1},
            "align_mouth": {"type": "number", "minimum": -200, "maximum": 200, "description": "ms"},
            "seed": {"type": "integer"},
        },
    }


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
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "404": _error("Unknown avatar"),
                    "413": TOO_LARGE,
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
                "summary": "One session's state and statistics",
                "responses": {
                    "200": _json("Session", {"$ref": "#/components/schemas/Session"}),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
                },
            },
            "delete": {
                "summary": "Close a session",
                "responses": {
                    "200": _json("Closed", {"type": "object"}),
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
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "413": TOO_LARGE,
                    "422": _error("Not a usable portrait (no face, several faces, too small...)"),
                },
            }
        },
        "/api/sonic/generate": {
            "post": {
                "summary": "Offline generation (Sonic-compatible): audio + image -> MP4",
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
                                        "description": "JSON object: "
                                        "duration, min_resolution, expand_ratio, inference_steps, "
                                        "dynamic_scale, motion_scale, align_mouth, smooth_motion",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json("Generated", {"$ref": "#/components/schemas/GenerateResult"}),
                    "202": _json("Accepted (asynchronous job)", {"$ref": "#/components/schemas/Job"}),
                    "400": BAD_REQUEST,
                    "401": UNAUTHORIZED,
                    "413": TOO_LARGE,
                    "422": _error("Unusable image or audio"),
                    "503": BUSY,
                },
            }
        },
        "/api/jobs/{job_id}": {
            "parameters": [job_id],
            "get": {
                "summary": "An offline job's status",
                "responses": {
                    "200": _json("Job", {"$ref": "#/components/schemas/Job"}),
                    "401": UNAUTHORIZED,
                    "404": NOT_FOUND,
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
                    "404": NOT_FOUND,
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
                "sdp": {"type": "string", "description": "SDP offer with an audio m-line"},
                "type": {"type": "string", "enum": ["offer"]},
                "avatar": {"type": "string", "description": "'default' or a key from /api/avatars"},
                "params": _controls_schema(),
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
        "Session": {"type": "object", "properties": {"session_id": {"type": "string"}}},
        "SessionList": {"type": "object"},
        "Avatar": {"type": "object", "properties": {"key": {"type": "string"}}},
        "GenerateResult": {
            "type": "object",
            "properties": {
                "success": {"type": "boolean"},
                "video_url": {"type": "string"},
                "output_path": {"type": "string"},
            },
        },
        "Job": {"type": "object", "properties": {"job_id": {"type": "string"}, "status": {"type": "string"}}},
    }
