#!/usr/bin/env python3
"""A worker: consumes a queue through Warren and settles every delivery.

Acks good messages; a body "retry" is nacked with requeue on its first attempt
(Warren redelivers it) and acked on the next; a body "poison" is nacked without
requeue (dead-lettered). Prints one JSON line per delivery. With --streaming
it uses StreamingSubscribe: acks and nacks go back in the same stream.

    python worker.py --queue jobs [--streaming]
"""

import json
import queue
import time

from busclient import base_parser, bus_pb2, connect, fail, grpc, log, to_dict


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--queue", required=True, help="the durable queue to consume (shared by every worker)")
    p.add_argument("--exchange", default="amq.direct",
                   help="bind the queue to this exchange, declaring the queue if needed "
                        "('' consumes an existing queue; default: %(default)s)")
    p.add_argument("--binding-key", action="append", help="repeatable (default: the queue's name)")
    p.add_argument("--prefetch", type=int, default=10)
    p.add_argument("--retry-delay-ms", type=int, default=500, help="redelivery delay of a retried message")
    p.add_argument("--count", type=int, default=0, help="exit after N messages acked or dead-lettered")
    p.add_argument("--timeout", type=float, help="exit with an error after this many seconds")
    p.add_argument("--streaming", action="store_true", help="StreamingSubscribe: settle in the stream")
    args = p.parse_args()

    bus = connect(args.addr)
    subscription = bus_pb2.SubscribeRequest(
        queue=args.queue,
        exchange=args.exchange,
        binding_keys=(args.binding_key or [args.queue]) if args.exchange else [],
        prefetch=args.prefetch,
    )
    if args.streaming:
        # Requests go out as they are put here: first the subscription, then
        # settlements (None ends our half of the stream).
        requests: "queue.Queue" = queue.Queue()
        requests.put(bus_pb2.StreamingSubscribeRequest(subscription=subscription))
        stream = bus.StreamingSubscribe(iter(requests.get, None), timeout=args.timeout)

        def ack(ids):
            requests.put(bus_pb2.StreamingSubscribeRequest(ack_ids=ids))

        def nack(ids, requeue, delay_ms=0):
            requests.put(bus_pb2.StreamingSubscribeRequest(nack_ids=ids, requeue=requeue, delay_ms=delay_ms))
    else:
        stream = bus.Subscribe(subscription, timeout=args.timeout)

        def ack(ids):
            bus.Ack(bus_pb2.AckRequest(delivery_ids=ids))

        def nack(ids, requeue, delay_ms=0):
            bus.Nack(bus_pb2.NackRequest(delivery_ids=ids, requeue=requeue, delay_ms=delay_ms))
    done = 0
    try:
        stream.initial_metadata()  # Warren answers once the queue is declared, bound and consumed
        if not stream.done():  # (a refusal ends the call instead)
            log(f"subscribed to {args.queue}")
        for delivery in stream:
            body = delivery.message.body.decode("utf-8", "replace")
            ids = [delivery.delivery_id]
            if body == "poison":
                nack(ids, requeue=False)
                action = "dead-lettered"
            elif body == "retry" and delivery.attempt == 1:
                nack(ids, requeue=True, delay_ms=args.retry_delay_ms)
                action = "requeued"
            else:
                ack(ids)
                action = "acked"
            print(json.dumps({**to_dict(delivery.message), "routing_key": delivery.routing_key,
                              "attempt": delivery.attempt, "action": action}), flush=True)
            if action != "requeued":
                done += 1
                if done == args.count:
                    break
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise SystemExit(f"error: timed out after {args.timeout}s with {done} message(s) settled")
        fail(e)
    finally:
        if args.streaming:
            # In-stream settlements are not answered: give the last ones a
            # moment to reach Warren before the stream goes.
            requests.put(None)
            time.sleep(0.3)
        stream.cancel()  # unsettled deliveries go back to the queue


if __name__ == "__main__":
    main()
