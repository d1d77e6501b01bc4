"""Apps and servers inside a test's network namespace, for tests/integration/intercept.rs.

serve:            HTTP on 10.203.1.10:80 (the payment app) and 10.203.1.20:8080 (a host outside
                  the mesh), an echo server on 10.203.1.20:7000, and greeting servers that speak
                  first (as MySQL and SMTP do) on 10.203.1.20:3306 and :7001. Prints "ready".
serve-app:        an app in a pod, on every address: HTTP on :8080 (web-app), echo on :7000 and a
                  greeting server on :7001. Prints "ready".
echo HOST PORT:   sends bytes, half-closes, prints what came back.
greet HOST PORT:  connects and prints the milliseconds until the server's first bytes.
"""
import http.server
import socket
import socketserver
import sys
import threading
import time


class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s saw Host %s\n" % (self.server.name, self.headers.get("Host"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Threaded(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                break
            self.request.sendall(data)


class Greet(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"220 greetings from a server-first protocol\r\n")
        self.request.recv(1)


def serve():
    servers = []
    for name, addr in [("payment-app", ("10.203.1.10", 80)), ("outside", ("10.203.1.20", 8080))]:
        s = Threaded(addr, App)
        s.name = name
        servers.append(s)
    servers.append(Threaded(("10.203.1.20", 7000), Echo))
    servers.append(Threaded(("10.203.1.20", 3306), Greet))
    servers.append(Threaded(("10.203.1.20", 7001), Greet))
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def serve_app():
    http = Threaded(("0.0.0.0", 8080), App)
    http.name = "web-app"
    servers = [http, Threaded(("0.0.0.0", 7000), Echo), Threaded(("0.0.0.0", 7001), Greet)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def echo(host, port):
    with socket.create_connection((host, int(port)), timeout=10) as c:
        c.sendall(b"opaque bytes \x00\x01\x02")
        c.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += d
    print(got.decode("latin-1"))


def greet(host, port):
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as c:
        c.recv(64)
        print("%.1f" % ((time.monotonic() - started) * 1000))


if __name__ == "__main__":
    {"serve": serve, "serve-app": serve_app, "echo": echo, "greet": greet}[sys.argv[1]](*sys.argv[2:])
