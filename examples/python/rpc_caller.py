#!/usr/bin/env python3
"""Calls a service over the bus and prints its reply as one line of JSON.

    python rpc_caller.py --routing-key upper "hello"
"""

import json

from busclient import base_parser, bus_pb2, connect, fail, grpc, header, message, to_dict


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--exchange", default="amq.direct")
    p.add_argument("--routing-key", required=True, help="where the responders listen (their queue)")
    p.add_argument("-H", "--header", type=header, action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--timeout-ms", type=int, default=5000, help="how long to wait for the reply")
    p.add_argument("body")
    args = p.parse_args()

    bus = connect(args.addr)
    request = bus_pb2.CallRequest(
        exchange=args.exchange,
        routing_key=args.routing_key,
        message=message(args.body, args.header, content_type="text/plain"),
        timeout_ms=args.timeout_ms,
    )
    try:
        # The gRPC deadline leaves Warren time to report its own timeout.
        reply = bus.Call(request, timeout=args.timeout_ms / 1000 + 5)
    except grpc.RpcError as e:
        # DEADLINE_EXCEEDED: no reply in time; FAILED_PRECONDITION: no queue bound for the key.
        fail(e)
    print(json.dumps(to_dict(reply.message)))


if __name__ == "__main__":
    main()
