#!/usr/bin/env python3
"""An RPC responder: answers each request on a queue with its body in upper case.

Requests come from Call (rpc_caller.py); Reply sends the answer to the
request's reply_to with its correlation_id, and acks the request.

    python rpc_responder.py --queue upper
"""

from busclient import base_parser, bus_pb2, connect, fail, grpc, log, message


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--queue", required=True, help="the request queue (shared by every responder)")
    p.add_argument("--exchange", default="amq.direct", help="bind the queue to this exchange, key: the queue's name")
    p.add_argument("--name", default="python", help="sent back in the reply's 'responder' header")
    p.add_argument("--count", type=int, default=0, help="exit after answering N requests")
    p.add_argument("--timeout", type=float, help="exit with an error after this many seconds")
    args = p.parse_args()

    bus = connect(args.addr)
    stream = bus.Subscribe(
        bus_pb2.SubscribeRequest(queue=args.queue, exchange=args.exchange, binding_keys=[args.queue]),
        timeout=args.timeout,
    )
    answered = 0
    try:
        stream.initial_metadata()  # sent once Warren consumes the queue
        if not stream.done():
            log(f"answering requests on {args.queue}")
        for request in stream:
            body = request.message.body.decode("utf-8", "replace")
            reply = message(body.upper(), [("responder", args.name)], content_type="text/plain")
            bus.Reply(bus_pb2.ReplyRequest(delivery_id=request.delivery_id, message=reply))
            log(f"answered {body!r}")
            answered += 1
            if answered == args.count:
                break
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise SystemExit(f"error: timed out after {args.timeout}s with {answered} request(s) answered")
        fail(e)
    finally:
        stream.cancel()


if __name__ == "__main__":
    main()
