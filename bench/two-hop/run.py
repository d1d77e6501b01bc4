#!/usr/bin/env python3
"""Two-hop mTLS, one run: client -> sidecar -> (mTLS, HTTP/2) -> sidecar -> upstream, for
Outrigger (with its control plane as the CA) and for two Envoys with the same mTLS setup.

Same steps as the shared proxybench kit, per hop pair: both sidecars pinned to CPU 1, wrk /
oha and the nginx upstream on CPU 0; wrk -t1 -c32 -d8s for throughput and the sidecars'
CPU per request (summed over both), oha at a fixed 2000 req/s for latency, RSS of both.
Rounds interleave the targets. Writes a Markdown report (OUT, default stdout).

  ROUNDS=3 OUT=/tmp/two-hop.md python3 bench/two-hop/run.py   (after cargo build --release)
"""
import json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("BIN_DIR", os.path.join(ROOT, "target", "release"))
ENVOY = os.environ.get("ENVOY", os.path.expanduser("~/.cache/proxybench/tools/envoy"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
UP, EA, EB = 18280, 18201, 18202
CTL, OA, OB_IN, OB_OUT, OA_ADM, OB_ADM, CTL_ADM = 18210, 18211, 18212, 18213, 18214, 18215, 18216
WORK = tempfile.mkdtemp(prefix="two-hop-")
TOKEN = "bench-token-0123456789"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def certs():
    d = WORK
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2", "-subj", "/CN=bench-ca",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"])
    for name in ("client", "up"):
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj", f"/CN={name}"])
        with open(f"{d}/{name}.ext", "w") as f:
            f.write(f"subjectAltName=URI:spiffe://bench.local/service/{name}\nextendedKeyUsage=serverAuth,clientAuth\n")
        run(["openssl", "x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{d}/{name}.pem", "-extfile", f"{d}/{name}.ext"])


def render(src, dst):
    with open(os.path.join(HERE, src)) as f:
        text = f.read()
    for k, v in {"@A_PORT@": EA, "@B_PORT@": EB, "@UP_PORT@": UP, "@DIR@": WORK}.items():
        text = text.replace(k, str(v))
    with open(os.path.join(WORK, dst), "w") as f:
        f.write(text)
    return os.path.join(WORK, dst)


def start(cmd, cpu, log):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=open(os.path.join(WORK, log), "w"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def get(url, host="up", token=None, data=None, method=None):
    req = urllib.request.Request(url, data=data, method=method, headers={"Host": host})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=3) as r:
        return r.status, r.read()


def wait_ok(url, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        try:
            if get(url) == (200, b"ok\n"):
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} never answered 200 ok")


def cpu_ticks(pids):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def rss_kib(pids, field="VmRSS:"):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith(field):
                    total += int(line.split()[1])
    return total


def measure(pids, url):
    host = ["-H", "Host: up"]
    run(["taskset", "-c", "0", "wrk", "-t1", "-c32", "-d2s"] + host + [url])
    before = cpu_ticks(pids)
    out = run(["taskset", "-c", "0", "wrk", "-t1", "-c32", "-d8s"] + host + [url]).stdout
    after = cpu_ticks(pids)
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = json.loads(run(["taskset", "-c", "0", "oha", "--no-tui", "--output-format", "json", "--worker-threads", "1",
                          "-q", "2000", "--latency-correction", "-c", "16", "-z", "10s"] + host + [url]).stdout)
    pct = lat["latencyPercentiles"]
    return dict(rps=rps, us_per_req=(after - before) / CLK_TCK * 1e6 / max(reqs, 1),
                p50=pct["p50"] * 1e3, p99=pct["p99"] * 1e3, p999=pct["p99.9"] * 1e3, rss_mib=rss_kib(pids) / 1024)


def envoy_pair():
    b = start([ENVOY, "-c", render("envoy-server.yaml", "envoy-server.yaml"), "--concurrency", "1",
               "--disable-hot-restart", "--base-id", "21", "-l", "warn"], 1, "envoy-b.log")
    a = start([ENVOY, "-c", render("envoy-client.yaml", "envoy-client.yaml"), "--concurrency", "1",
               "--disable-hot-restart", "--base-id", "22", "-l", "warn"], 1, "envoy-a.log")
    return [a, b], f"http://127.0.0.1:{EA}/"


def outrigger_pair():
    proxy = os.path.join(BIN, "outrigger-proxy")
    common = ["--control-plane", f"http://127.0.0.1:{CTL}", "--token-file", f"{WORK}/token",
              "--trust-domain", "bench.local", "--threads", "1", "--no-access-log", "--log", "warn"]
    b = start([proxy] + common + ["--service", "up", "--app", f"127.0.0.1:{UP}", "--inbound", f"127.0.0.1:{OB_IN}",
                                  "--outbound", f"127.0.0.1:{OB_OUT}", "--admin", f"127.0.0.1:{OB_ADM}",
                                  "--bootstrap-token-file", f"{WORK}/up.bootstrap"], 1, "outrigger-b.log")
    a = start([proxy] + common + ["--service", "client", "--outbound", f"127.0.0.1:{OA}", "--admin", f"127.0.0.1:{OA_ADM}",
                                  "--bootstrap-token-file", f"{WORK}/client.bootstrap"], 1, "outrigger-a.log")
    return [a, b], f"http://127.0.0.1:{OA}/"


def main():
    certs()
    with open(f"{WORK}/token", "w") as f:
        f.write(TOKEN)
    with open(f"{WORK}/nginx.conf", "w") as f:
        f.write(f"worker_processes 1; daemon off; user root; pid {WORK}/nginx.pid; error_log {WORK}/nginx.err warn;\n"
                "events { worker_connections 4096; }\n"
                "http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;\n"
                f"  server {{ listen 127.0.0.1:{UP} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }} }}\n")
    upstream = start(["nginx", "-p", WORK, "-c", f"{WORK}/nginx.conf"], 0, "nginx.log")
    control = start([os.path.join(BIN, "outrigger-control"), "--listen", f"127.0.0.1:{CTL}", "--data-dir", f"{WORK}/data",
                     "--token-file", f"{WORK}/token", "--trust-domain", "bench.local", "--mtls", "strict"], 0, "control.log")
    try:
        end = time.time() + 20
        while True:
            try:
                if get(f"http://127.0.0.1:{CTL}/readyz")[0] == 200:
                    break
            except Exception:
                if time.time() > end:
                    raise
                time.sleep(0.1)
        with open(os.path.join(HERE, "mesh.yaml"), "rb") as f:
            get(f"http://127.0.0.1:{CTL}/v1/apply", token=TOKEN, data=f.read(), method="POST")
        for svc in ("client", "up"):
            _, body = get(f"http://127.0.0.1:{CTL}/v1/identity/tokens", token=TOKEN, method="POST",
                          data=json.dumps({"service": svc, "ttl_secs": 86400}).encode())
            with open(f"{WORK}/{svc}.bootstrap", "w") as f:
                f.write(json.loads(body)["token"])
        results = {"envoy": [], "outrigger": []}
        for r in range(ROUNDS):
            for name, pair in (("envoy", envoy_pair), ("outrigger", outrigger_pair)):
                procs, url = pair()
                try:
                    wait_ok(url)
                    m = measure([p.pid for p in procs], url)
                finally:
                    stop(procs)
                m["round"] = r + 1
                results[name].append(m)
                print(f"round {r + 1} {name}: {m}", file=sys.stderr, flush=True)
        report(results)
    finally:
        stop([control, upstream])
        shutil.rmtree(WORK, ignore_errors=True)


def report(results):
    med = {k: {f: statistics.median(m[f] for m in v) for f in ("rps", "us_per_req", "p50", "p99", "p999", "rss_mib")}
           for k, v in results.items()}
    e, o = med["envoy"], med["outrigger"]
    lines = [
        f"Two-hop mTLS, {ROUNDS} rounds (medians): wrk/oha -> sidecar -> mTLS h2 -> sidecar -> nginx; both sidecars pinned to CPU 1,",
        "one worker each, no access log; CPU and RSS summed over both sidecars.", "",
        "| target | req/s | CPU µs/req (both) | p50 ms | p99 ms | p99.9 ms | RSS MiB (both) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in (("Envoy ×2", e), ("Outrigger ×2", o)):
        lines.append(f"| {name} | {m['rps']:,.0f} | {m['us_per_req']:.1f} | {m['p50']:.3f} | {m['p99']:.3f} | {m['p999']:.3f} | {m['rss_mib']:.1f} |")
    lines += ["", f"Outrigger/Envoy: req/s ×{o['rps'] / e['rps']:.2f}, CPU per request ×{o['us_per_req'] / e['us_per_req']:.2f}, "
              f"p50 ×{o['p50'] / e['p50']:.2f}, p99 ×{o['p99'] / e['p99']:.2f}, RSS ×{o['rss_mib'] / e['rss_mib']:.2f}", "",
              "| round | target | req/s | µs/req | p50 | p99 | p99.9 | RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        for m in rows:
            lines.append(f"| {m['round']} | {name} | {m['rps']:,.0f} | {m['us_per_req']:.1f} | {m['p50']:.3f} | {m['p99']:.3f} | {m['p999']:.3f} | {m['rss_mib']:.1f} |")
    text = "\n".join(lines) + "\n"
    out = os.environ.get("OUT")
    if out:
        with open(out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
