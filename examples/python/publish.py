#!/usr/bin/env python3
"""Publishes messages through Warren; each returns once the broker confirmed it.

    python publish.py --routing-key jobs hello "second message" -H trace=abc -H n=3
"""

import sys

from busclient import base_parser, bus_pb2, connect, fail, grpc, header, log, message


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--exchange", default="amq.direct", help="'' is the default exchange (default: %(default)s)")
    p.add_argument("--routing-key", required=True)
    p.add_argument("-H", "--header", type=header, action="append", default=[], metavar="NAME=VALUE",
                   help="an AMQP header; VALUE is JSON when it parses (n=3, ok=true), else a string")
    p.add_argument("--content-type", default="text/plain")
    p.add_argument("bodies", nargs="*", help="one message each (default: one per line of stdin)")
    args = p.parse_args()

    bus = connect(args.addr)
    for body in args.bodies or (line.rstrip("\n") for line in sys.stdin):
        request = bus_pb2.PublishRequest(
            exchange=args.exchange,
            routing_key=args.routing_key,
            message=message(body, args.header, content_type=args.content_type),
        )
        try:
            confirmed = bus.Publish(request, timeout=30)
        except grpc.RpcError as e:
            # FAILED_PRECONDITION: no queue is bound for this routing key (yet).
            fail(e)
        log(f"published {confirmed.message_id}: {body}")


if __name__ == "__main__":
    main()
