#!/usr/bin/env python3
"""The Redis server's cost of one warm compare-and-swap, script against script.

Usage (from the repository's root; Redis 7 tools on the PATH, a server of one's own, since
CONFIG RESETSTAT clears the counters of every client):

    redis-server --port 6390 --save '' --appendonly no &
    python3 examples/bench/redis_script_cost.py --port 6390 --calls 50000 --reps 5 \\
        git:main work bare

    # instructions per call, exact to a few tenths of a percent and blind to the machine's load:
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg/out.%p \\
        redis-server --port 6391 --save '' --appendonly no &
    python3 examples/bench/redis_script_cost.py --port 6391 --calls 5000 --reps 3 \\
        --callgrind /tmp/cg git:main work bare

Subjects: `work` (the driver's CAS_SCRIPT in the work tree), `git:REV` (the same at a git
revision), `bare` (the bench's baseline, `redis_cas::BareCas`), or `NAME=FILE.lua` (a script
taking the driver's arguments); with `/9` after it (`work/9`), the expiry's empty value is left
out, as the driver now sends it (it sent all 10 arguments before). Each runs on 64 records stored as the driver stores them (v, s,
d, t with 16 commit tokens, 256 bytes, and m; v and d only for `bare`), with as many EVALSHA
calls round-robin over them, each with the expected version and last token it will find: the
calls of one key follow each other, so what each finds is known in advance, and every call
succeeds (checked: every record ends at its expected version and tokens). They are sent with
`redis-cli --pipe`. Measured: `usec_per_call` of `evalsha` in INFO commandstats (the server's
clock, so a busy machine inflates it) and the server's own CPU time per call (from
/proc/PID/schedstat: parsing and replying included), or with --callgrind the instructions per
call. Repetitions interleave the subjects; medians are printed.
"""
import argparse
import glob
import os
import re
import statistics
import subprocess
import time

KEYS = 64
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = "mp-storage/src/driver/redis/scripts.rs"
BASELINE = "examples/bench/baseline.rs"


def rust_const(source, name):
    m = re.search(r'const %s: &str = r"(.*?)";\n' % name, source, re.S)
    if not m:
        raise SystemExit("no %s" % name)
    return m.group(1)


def with_publish(body):
    # Older scripts call hint(k, v), newer ones redis.pcall(publish, k, v): define either.
    if "hint(" in body:
        return "local function hint(k, v) redis.pcall('PUBLISH', k, v) end\n" + body
    return "local publish = 'PUBLISH'\n" + body


def subject(spec):
    if spec.endswith("/9"):
        name, body, bare = subject(spec[:-2])
        return spec, body, bare
    if spec == "bare":
        return "bare", rust_const(open(os.path.join(ROOT, BASELINE)).read(), "CAS"), True
    if spec == "work":
        source = open(os.path.join(ROOT, SCRIPTS)).read()
        return "work", with_publish(rust_const(source, "CAS_SCRIPT")), False
    if spec.startswith("git:"):
        source = subprocess.run(["git", "-C", ROOT, "show", "%s:%s" % (spec[4:], SCRIPTS)],
                                check=True, capture_output=True, text=True).stdout
        return spec, with_publish(rust_const(source, "CAS_SCRIPT")), False
    name, path = spec.split("=", 1)
    return name, with_publish(open(path).read()), False


class Server:
    def __init__(self, port, callgrind):
        self.port = str(port)
        self.callgrind = callgrind
        info = self.cli("INFO", "server")
        self.pid = re.search(r"process_id:(\d+)", info).group(1)

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", self.port, *args], check=True,
                              capture_output=True, text=True).stdout

    def pipe(self, data):
        out = subprocess.run(["redis-cli", "-p", self.port, "--pipe"], input=data, check=True,
                             capture_output=True).stdout
        if b"errors: 0" not in out:
            raise SystemExit(out.decode())

    def cpu_ns(self):
        return int(open("/proc/%s/schedstat" % self.pid).read().split()[0])


def resp(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def run(server, name, body, bare, calls):
    sha = server.cli("SCRIPT", "LOAD", body).strip()
    keys = ["mp-script-cost:%02d" % i for i in range(KEYS)]
    base = 1000
    serial = 1
    last = {}
    init = []
    for k in keys:
        tokens = "".join("%016x" % (serial + j) for j in range(16))
        last[k] = tokens[-16:]
        serial += 16
        init.append(resp(["DEL", k]))
        if bare:
            init.append(resp(["HSET", k, "v", str(base), "d", '{"count":1000}']))
        else:
            init.append(resp(["HSET", k, "v", str(base), "s", "1", "d", '{"count":1000}',
                              "t", tokens, "m", ""]))
    server.pipe(b"".join(init))
    version = {k: base for k in keys}
    parts = []
    for i in range(calls):
        k = keys[i % KEYS]
        v = version[k]
        data = '{"count":%d}' % (v + 1)
        if bare:
            parts.append(resp(["EVALSHA", sha, "1", k, str(v), str(v + 1), data]))
        else:
            token = "%016x" % serial
            serial += 1
            # expected version, expected token, new version, schema, data, token, meta,
            # claimant, expiry kind and value: what the driver sends for a warm update.
            args = ["EVALSHA", sha, "1", k, str(v), last[k], str(v + 1), "1", data, token, "",
                    "00000000000000aa", "k", ""]
            parts.append(resp(args[:-1] if name.endswith("/9") else args))
            last[k] = token
        version[k] = v + 1
    data = b"".join(parts)
    server.cli("CONFIG", "RESETSTAT")
    if server.callgrind:
        subprocess.run(["callgrind_control", "-z", server.pid], check=True, capture_output=True)
    cpu = server.cpu_ns()
    server.pipe(data)
    cpu = server.cpu_ns() - cpu
    instructions = None
    if server.callgrind:
        before = set(glob.glob(os.path.join(server.callgrind, "*")))
        subprocess.run(["callgrind_control", "-d", server.pid], check=True, capture_output=True)
        dump = sorted(set(glob.glob(os.path.join(server.callgrind, "*"))) - before)[-1]
        for line in open(dump):
            if line.startswith(("summary:", "totals:")):
                instructions = int(line.split()[1]) / calls
        os.remove(dump)
    stats = server.cli("INFO", "commandstats")
    m = re.search(r"cmdstat_evalsha:calls=(\d+),usec=\d+,usec_per_call=([\d.]+),"
                  r"rejected_calls=\d+,failed_calls=(\d+)", stats)
    if not m or int(m.group(1)) != calls or int(m.group(3)) != 0:
        raise SystemExit("%s: not every call ran and succeeded: %s" % (name, m and m.group(0)))
    for k in keys:
        got = server.cli("HMGET", k, "v", "t").split("\n")
        if got[0] != str(version[k]) or (not bare and not (len(got[1]) == 256
                                                           and got[1].endswith(last[k]))):
            raise SystemExit("%s: %s ended at %r, not version %d" % (name, k, got, version[k]))
        server.cli("DEL", k)
    return float(m.group(2)), cpu / 1e3 / calls, instructions


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=6390)
    p.add_argument("--calls", type=int, default=50000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--callgrind", metavar="DIR",
                   help="the server runs under callgrind, dumping into DIR: count instructions")
    p.add_argument("subjects", nargs="+")
    a = p.parse_args()
    server = Server(a.port, a.callgrind)
    subjects = [subject(s) for s in a.subjects]
    results = {name: [] for name, _, _ in subjects}
    for _ in range(a.reps):
        for name, body, bare in subjects:
            results[name].append(run(server, name, body, bare, a.calls))
    for name, rs in results.items():
        usec = [r[0] for r in rs]
        line = "%-12s usec_per_call %6.2f (%s)  server CPU us/call %6.2f" % (
            name, statistics.median(usec), " ".join("%.2f" % u for u in usec),
            statistics.median(r[1] for r in rs))
        if a.callgrind:
            ins = [r[2] for r in rs]
            line += "  instructions/call %.0f (%s)" % (
                statistics.median(ins), " ".join("%.0f" % i for i in ins))
        print(line)


main()
