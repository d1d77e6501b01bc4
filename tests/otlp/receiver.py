#!/usr/bin/env python3
"""An OTLP/gRPC trace receiver for the tracing tests, built from the official OpenTelemetry
protobuf definitions (PyPI `opentelemetry-proto`: the generated messages and the
`TraceService` gRPC stubs) served with grpcio. It is the "real collector" the proxy exports
to: if the proxy's spans decode here, any OTLP collector reads them.

  receiver.py [--port P] [--out FILE] [--delay SECONDS] [--fail]

Listens on 127.0.0.1:P (0, the default, picks a free port) and prints the port as the first
line on stdout. Every span received is written as one JSON line to FILE (default: stdout),
flushed after each export call:

  {"trace_id": hex32, "span_id": hex16, "parent_span_id": hex16 or null, "name": str,
   "kind": "SPAN_KIND_CLIENT", "service": resource service.name, "resource": {...},
   "attributes": {...}, "status": "STATUS_CODE_ERROR", "status_message": str,
   "start_time_unix_nano": int, "end_time_unix_nano": int, "scope": str}

Attribute values keep their OTLP type (int, float, bool, str, lists, nested dicts), so a
test can tell `"http.response.status_code": 200` from `"200"`.

  --delay SECONDS  sleep that long in every Export before answering: a slow collector
  --fail           answer every Export with UNAVAILABLE: a broken collector

Needs `python3 -m pip install -r tests/requirements.txt` (opentelemetry-proto, grpcio).
"""

import argparse
import json
import sys
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


def any_value(v):
    """An OTLP AnyValue as the JSON value of the same type."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return attrs(v.kvlist_value.values)
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def span_json(resource, scope, span):
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        # OTLP marks a root span with an empty parent id.
        "parent_span_id": span.parent_span_id.hex() or None,
        "name": span.name,
        "kind": trace_pb2.Span.SpanKind.Name(span.kind),
        "service": resource.get("service.name"),
        "resource": resource,
        "attributes": attrs(span.attributes),
        "status": trace_pb2.Status.StatusCode.Name(span.status.code),
        "status_message": span.status.message,
        "start_time_unix_nano": span.start_time_unix_nano,
        "end_time_unix_nano": span.end_time_unix_nano,
        "scope": scope.name,
    }


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out, delay, fail):
        self.out = out
        self.delay = delay
        self.fail = fail
        # Exports run on several server threads; one line must never interleave another.
        self.lock = threading.Lock()

    def Export(self, request, context):
        if self.delay > 0:
            time.sleep(self.delay)
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "receiver started with --fail")
        lines = []
        for rs in request.resource_spans:
            resource = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    lines.append(json.dumps(span_json(resource, ss.scope, span), sort_keys=True))
        with self.lock:
            for line in lines:
                self.out.write(line + "\n")
            self.out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", help="file for the span lines (default: stdout)")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--fail", action="store_true")
    args = p.parse_args()

    out = open(args.out, "a", encoding="utf-8") if args.out else sys.stdout
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
        Receiver(out, args.delay, args.fail), server
    )
    port = server.add_insecure_port("127.0.0.1:%d" % args.port)
    if port == 0:
        sys.exit("could not listen on 127.0.0.1:%d" % args.port)
    server.start()
    # Only now, once calls are accepted: whoever waits for this line may export at once.
    sys.stdout.write("%d\n" % port)
    sys.stdout.flush()
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)


if __name__ == "__main__":
    main()
