#!/usr/bin/env python3
"""A real gRPC server and client (grpcio, generic handlers, raw bytes: no protoc) for
tests/integration/protocols.rs, which runs the client against the proxy and the server behind it.

  grpc_peer.py server [--port P]   listens on 127.0.0.1:P (0 = any free port) and prints
                                   "READY <port>" on stdout once it accepts calls.
  grpc_peer.py client --target HOST:PORT [--authority NAME]
                                   runs every check against the target, prints one line per
                                   check, and exits 0 only if all of them passed.

Service `svc.Echo`:
  Call    unary: echoes the request bytes; initial metadata `x-saw-meta` repeats the request's
          `x-req-meta`; trailing metadata `x-echo-trailer: kept` and `x-echo-len: <n>`.
  Fail    unary: aborts with NOT_FOUND, details "no such thing".
  Stream  server streaming: the request is a count N; answers N messages `msg-<i>` padded to
          growing sizes, then OK with trailing metadata `x-stream-trailer: done`.

Needs `python3 -m pip install grpcio`.
"""

import argparse
import sys
from concurrent import futures

import grpc

SERVICE = "svc.Echo"
NOT_FOUND_DETAILS = "no such thing"
TIMEOUT = 30.0


def stream_message(i):
    # Grows to ~100 KiB so that several HTTP/2 DATA frames and window updates are involved.
    return ("msg-%d:" % i).encode() + b"s" * (i * 20000)


def handle_call(request, context):
    saw = dict(context.invocation_metadata()).get("x-req-meta", "<missing>")
    context.send_initial_metadata((("x-saw-meta", saw),))
    context.set_trailing_metadata((("x-echo-trailer", "kept"), ("x-echo-len", str(len(request)))))
    return request


def handle_fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, NOT_FOUND_DETAILS)


def handle_stream(request, context):
    n = int(request.decode("ascii"))
    for i in range(n):
        yield stream_message(i)
    context.set_trailing_metadata((("x-stream-trailer", "done"),))


# Calls seen per key, so a flaky method fails only the first time it sees a key.
SEEN = {}
SEEN_LOCK = __import__("threading").Lock()


def seen(key):
    with SEEN_LOCK:
        SEEN[key] = SEEN.get(key, 0) + 1
        return SEEN[key]


def handle_flaky(request, context):
    # The first call for a key fails before any message: a trailers-only response, so the
    # status travels in the response headers.
    if seen(b"unary:" + request) == 1:
        context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
    return request


def handle_flaky_stream(request, context):
    # The first call for a key sends a message, then fails: the status is in the trailers.
    first = seen(b"stream:" + request) == 1
    yield b"part-1"
    if first:
        context.abort(grpc.StatusCode.UNAVAILABLE, "lost my place")
    yield b"part-2"


def handle_count(request, context):
    with SEEN_LOCK:
        return str(SEEN.get(request, 0)).encode()


def serve(port):
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Call": grpc.unary_unary_rpc_method_handler(handle_call),
            "Fail": grpc.unary_unary_rpc_method_handler(handle_fail),
            "Stream": grpc.unary_stream_rpc_method_handler(handle_stream),
            "Flaky": grpc.unary_unary_rpc_method_handler(handle_flaky),
            "FlakyStream": grpc.unary_stream_rpc_method_handler(handle_flaky_stream),
            "Count": grpc.unary_unary_rpc_method_handler(handle_count),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port("127.0.0.1:%d" % port)
    if bound == 0:
        print("cannot bind 127.0.0.1:%d" % port, file=sys.stderr, flush=True)
        return 1
    server.start()
    print("READY %d" % bound, flush=True)
    server.wait_for_termination()
    return 0


def check_unary_ok(channel):
    payload = bytes(range(256)) * 400  # ~100 KiB, every byte value
    call = channel.unary_unary("/%s/Call" % SERVICE, request_serializer=None, response_deserializer=None)
    response, rpc = call.with_call(payload, timeout=TIMEOUT, metadata=(("x-req-meta", "from-client"),))
    problems = []
    if response != payload:
        problems.append("response is %d bytes, not the %d sent (or differs)" % (len(response), len(payload)))
    if rpc.code() != grpc.StatusCode.OK:
        problems.append("status %s, expected OK" % rpc.code())
    initial = dict(rpc.initial_metadata())
    if initial.get("x-saw-meta") != "from-client":
        problems.append("request metadata did not arrive: initial metadata %r" % (initial,))
    trailing = dict(rpc.trailing_metadata())
    if trailing.get("x-echo-trailer") != "kept" or trailing.get("x-echo-len") != str(len(payload)):
        problems.append("custom trailing metadata missing: %r" % (trailing,))
    return problems


def check_not_found(channel):
    call = channel.unary_unary("/%s/Fail" % SERVICE, request_serializer=None, response_deserializer=None)
    try:
        response = call(b"anything", timeout=TIMEOUT)
    except grpc.RpcError as e:
        problems = []
        if e.code() != grpc.StatusCode.NOT_FOUND:
            problems.append("status %s, expected NOT_FOUND" % e.code())
        if e.details() != NOT_FOUND_DETAILS:
            problems.append("details %r, expected %r" % (e.details(), NOT_FOUND_DETAILS))
        return problems
    return ["call succeeded with %r, expected NOT_FOUND" % (response,)]


def check_server_stream(channel):
    n = 6
    call = channel.unary_stream("/%s/Stream" % SERVICE, request_serializer=None, response_deserializer=None)
    responses = call(str(n).encode("ascii"), timeout=TIMEOUT)
    got = list(responses)
    problems = []
    want = [stream_message(i) for i in range(n)]
    if got != want:
        problems.append(
            "got %d messages of sizes %r, expected sizes %r" % (len(got), [len(m) for m in got], [len(m) for m in want])
        )
    if responses.code() != grpc.StatusCode.OK:
        problems.append("status %s, expected OK" % responses.code())
    trailing = dict(responses.trailing_metadata() or ())
    if trailing.get("x-stream-trailer") != "done":
        problems.append("stream trailing metadata missing: %r" % (trailing,))
    return problems


CHECKS = [
    ("unary OK echoes bytes and custom trailing metadata", check_unary_ok),
    ("NOT_FOUND with its details arrives intact", check_not_found),
    ("server streaming delivers every message", check_server_stream),
]


def run_client(target, authority):
    options = [("grpc.default_authority", authority)] if authority else []
    failed = 0
    with grpc.insecure_channel(target, options=options) as channel:
        for name, check in CHECKS:
            try:
                problems = check(channel)
            except grpc.RpcError as e:
                problems = ["unexpected RPC error %s: %s" % (e.code(), e.details())]
            except Exception as e:  # any other surprise is a failed check, not a crash
                problems = ["unexpected %s: %s" % (type(e).__name__, e)]
            if problems:
                failed += 1
                print("FAIL %s: %s" % (name, "; ".join(problems)), flush=True)
            else:
                print("ok   %s" % name, flush=True)
    # Not "N passed, N failed": CI reads lines of that shape as a test runner's verdict.
    print("checks passed: %d/%d" % (len(CHECKS) - failed, len(CHECKS)), flush=True)
    return 0 if failed == 0 else 1


def run_retry_client(target, authority, expect_retry):
    """Calls the flaky methods once each with fresh keys. Through a route that retries
    UNAVAILABLE, both succeed and the server saw two calls; otherwise the client sees the
    failure and the server one call."""
    import uuid

    options = [("grpc.default_authority", authority)] if authority else []
    problems = []
    with grpc.insecure_channel(target, options=options) as channel:
        flaky = channel.unary_unary("/%s/Flaky" % SERVICE, request_serializer=None, response_deserializer=None)
        stream = channel.unary_stream("/%s/FlakyStream" % SERVICE, request_serializer=None, response_deserializer=None)
        count = channel.unary_unary("/%s/Count" % SERVICE, request_serializer=None, response_deserializer=None)
        key = uuid.uuid4().hex.encode()
        try:
            got = flaky(key, timeout=TIMEOUT)
            outcome = "ok" if got == key else "wrong reply"
        except grpc.RpcError as e:
            outcome = e.code().name
        want = "ok" if expect_retry else "UNAVAILABLE"
        if outcome != want:
            problems.append("unary (status in headers): got %s, want %s" % (outcome, want))
        calls = int(count(b"unary:" + key, timeout=TIMEOUT))
        if calls != (2 if expect_retry else 1):
            problems.append("unary: the server saw %d calls" % calls)
        try:
            parts = list(stream(key, timeout=TIMEOUT))
            outcome = "ok" if parts == [b"part-1", b"part-2"] else "messages %r" % parts
        except grpc.RpcError as e:
            outcome = e.code().name
        if outcome != want:
            problems.append("stream (status in trailers): got %s, want %s" % (outcome, want))
        calls = int(count(b"stream:" + key, timeout=TIMEOUT))
        if calls != (2 if expect_retry else 1):
            problems.append("stream: the server saw %d calls" % calls)
    for p in problems:
        print("FAIL %s" % p, flush=True)
    print("retry checks: %s" % ("all good" if not problems else "%d problems" % len(problems)), flush=True)
    return 0 if not problems else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, default=0)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--authority", default=None)
    r = sub.add_parser("retry-client")
    r.add_argument("--target", required=True)
    r.add_argument("--authority", default=None)
    r.add_argument("--expect-retry", choices=["yes", "no"], required=True)
    args = parser.parse_args()
    if args.mode == "server":
        return serve(args.port)
    if args.mode == "retry-client":
        return run_retry_client(args.target, args.authority, args.expect_retry == "yes")
    return run_client(args.target, args.authority)


if __name__ == "__main__":
    sys.exit(main())
