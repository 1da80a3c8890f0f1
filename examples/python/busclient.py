"""What the four Python examples share: the generated stubs, a channel to
Warren, and messages to and from JSON-friendly dicts."""

import argparse
import base64
import json
import os
import sys
from typing import NoReturn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
try:
    import grpc
    from google.protobuf import json_format
    from warren.v1 import bus_pb2, bus_pb2_grpc
except ImportError as e:  # pragma: no cover - a setup mistake, said plainly
    sys.exit(f"{e}: install requirements.txt and run ./gen.sh first (see README.md)")

__all__ = ["bus_pb2", "grpc", "connect", "base_parser", "header", "message", "to_dict", "log", "fail"]


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--addr",
        default=os.environ.get("WARREN_GRPC_ADDR", "127.0.0.1:5681"),
        help="Warren's gRPC address (default: $WARREN_GRPC_ADDR or %(default)s)",
    )
    return p


def connect(addr: str) -> bus_pb2_grpc.BusStub:
    return bus_pb2_grpc.BusStub(grpc.insecure_channel(addr))


def header(text: str) -> tuple:
    """NAME=VALUE; VALUE is JSON when it parses (3, true, {"a":1}), else a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def message(body: str, headers=(), **properties) -> bus_pb2.Message:
    """A Message with a UTF-8 body; headers are (name, JSON value) pairs."""
    m = bus_pb2.Message(body=body.encode(), **properties)
    for name, value in headers:
        # headers is map<string, google.protobuf.Value>: fill each Value from JSON.
        json_format.ParseDict(value, m.headers[name])
    return m


def _plain(value):
    # Value numbers are doubles: show whole numbers as the integers they were.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_dict(m: bus_pb2.Message) -> dict:
    """The message's body (text, or body_base64), headers and set properties."""
    try:
        out = {"body": m.body.decode("utf-8")}
    except UnicodeDecodeError:
        out = {"body_base64": base64.b64encode(m.body).decode()}
    out["headers"] = {k: _plain(json_format.MessageToDict(v)) for k, v in m.headers.items()}
    for field in ("content_type", "message_id", "correlation_id", "type", "app_id"):
        if getattr(m, field):
            out[field] = getattr(m, field)
    return out


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def fail(e: grpc.RpcError) -> NoReturn:
    sys.exit(f"error: {e.code().name}: {e.details()}")
