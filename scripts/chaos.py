#!/usr/bin/env python3
"""The chaos scenarios behind scripts/chaos (run that; it checks root, installs nftables and builds).

Creates network namespaces (a hub with a bridge, one per node), runs five aimesh nodes and their mock
upstreams inside them, drives bounded load from the hub, injects faults with kill -9 and nftables, and
removes everything it made on exit. Only the 10.77.0.0/24 addresses it creates ever see traffic.
"""
import argparse, ctypes, http.client, json, os, signal, subprocess, sys, tempfile, threading, time

PREFIX = f"amc{os.getpid() % 100000}"
HUB = f"{PREFIX}-hub"
NODE_COUNT = 5
API_PORT, GOSSIP_PORT, MOCK_PORT = 8080, 7946, 9000
CLONE_NEWNET = 0x40000000
HARNESS_KEY = "sk-chaos-harness"


def ns(i): return f"{PREFIX}-n{i}"
def addr(i): return f"10.77.0.{i}"


def run(*args, check=True, stdin=None):
    result = subprocess.run(args, input=stdin, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


class Lab:
    def __init__(self, binary, work):
        self.binary, self.work = binary, work
        self.nodes, self.mocks = {}, {}
        self.admin_public_key = None   # set by the budget scenario: mesh keys signed by this admin
        self.mock_latency = "0ms"
        self.made = []

    # --- namespaces -------------------------------------------------------------------------------
    def up(self):
        run("ip", "netns", "add", HUB); self.made.append(HUB)
        run("ip", "-n", HUB, "link", "set", "lo", "up")
        run("ip", "-n", HUB, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", HUB, "addr", "add", "10.77.0.254/24", "dev", "br0")
        run("ip", "-n", HUB, "link", "set", "br0", "up")
        for i in range(1, NODE_COUNT + 1):
            run("ip", "netns", "add", ns(i)); self.made.append(ns(i))
            run("ip", "-n", ns(i), "link", "set", "lo", "up")
            run("ip", "link", "add", "eth0", "netns", ns(i), "type", "veth", "peer", "name", f"p{i}", "netns", HUB)
            run("ip", "-n", HUB, "link", "set", f"p{i}", "master", "br0")
            run("ip", "-n", HUB, "link", "set", f"p{i}", "up")
            run("ip", "-n", ns(i), "addr", "add", f"{addr(i)}/24", "dev", "eth0")
            run("ip", "-n", ns(i), "link", "set", "eth0", "up")
            run("ip", "netns", "exec", ns(i), "nft", "-f", "-", stdin=(
                "table inet chaos {\n"
                " chain input { type filter hook input priority 0; policy accept; }\n"
                " chain output { type filter hook output priority 0; policy accept; }\n"
                "}\n"))
        # From here on this process (and every thread and child it starts) lives in the hub namespace:
        # it can reach the nodes and nothing else.
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        fd = os.open(f"/run/netns/{HUB}", os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the hub namespace failed")
        os.close(fd)

    def down(self):
        for process in list(self.nodes.values()) + list(self.mocks.values()):
            if process.poll() is None:
                process.kill()
        for process in list(self.nodes.values()) + list(self.mocks.values()):
            try:
                process.wait(timeout=10)
            except Exception:
                pass
        for name in reversed(self.made):
            run("ip", "netns", "del", name, check=False)

    # --- processes --------------------------------------------------------------------------------
    def start_mock(self, i):
        log = open(f"{self.work}/mock{i}.log", "a")
        self.mocks[i] = subprocess.Popen(["ip", "netns", "exec", ns(i), self.binary, "mock-upstream", "--listen",
                                          f"127.0.0.1:{MOCK_PORT}", "--name", f"upstream-{i}", "--latency", self.mock_latency],
                                         stdout=log, stderr=log)

    def config(self, i):
        path = f"{self.work}/n{i}.yaml"
        providers = "" if i == 1 else (
            f'providers:\n  local: {{ type: local, base_url: "http://127.0.0.1:{MOCK_PORT}/v1", '
            f'models: [ {{ name: m, upstream_model: m }} ] }}\n'
            f'  paid: {{ type: openai_compatible, base_url: "http://127.0.0.1:{MOCK_PORT}/v1", api_key: sk-chaos-local, '
            f'models: [ {{ name: paid, upstream_model: paid, input_cost_per_1m: 1000, output_cost_per_1m: 1000 }} ] }}\n')
        admin = f", admin_public_key: {self.admin_public_key}" if self.admin_public_key else ""
        # With mesh keys, clients need a key; the harness reads mesh status with a config key of its own.
        security = (f"security: {{ auth: {{ enabled: true, api_keys: [ {{ key: {HARNESS_KEY}, name: harness }} ] }} }}\n"
                    if self.admin_public_key else "")
        with open(path, "w") as f:
            f.write(f"""node:
  id: n{i}
  data_dir: {self.work}/n{i}
  mesh: {{ enabled: true, listen_addr: "{addr(i)}:{GOSSIP_PORT}", peers: [ "{addr(1)}:{GOSSIP_PORT}", "{addr(2)}:{GOSSIP_PORT}" ], trust: {{ mode: open{admin} }} }}
server: {{ listen_addr: "{addr(i)}:{API_PORT}" }}
{providers}{security}routing: {{ strategy: round_robin, failover: {{ max_retries: 4 }} }}
observability: {{ logging: {{ level: warning }} }}
""")
        return path

    def start_node(self, i):
        log = open(f"{self.work}/n{i}.log", "a")
        self.nodes[i] = subprocess.Popen(["ip", "netns", "exec", ns(i), self.binary, "node", "--config", self.config(i)],
                                         stdout=log, stderr=log)

    def kill(self, process):
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def nft(self, i, rules):
        run("ip", "netns", "exec", ns(i), "nft", "-f", "-", stdin="flush table inet chaos\n" + "".join(
            f"add rule inet chaos {rule}\n" for rule in rules))

    def heal(self):
        for i in range(1, NODE_COUNT + 1):
            self.nft(i, [])


# --- HTTP from the hub ----------------------------------------------------------------------------
def get(i, path, timeout=2):
    connection = http.client.HTTPConnection(addr(i), API_PORT, timeout=timeout)
    try:
        connection.request("GET", path, headers={"authorization": f"Bearer {HARNESS_KEY}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def peer_statuses(i):
    """{peer name: status} as node i sees them, or None when it does not answer."""
    try:
        status, body = get(i, "/aiproxy/mesh/status")
        return {p["id"]: p["status"] for p in json.loads(body)["peers"]} if status == 200 else None
    except Exception:
        return None


class ReplayWatch:
    """Sums gossip packets each node refused as replayed or stale — a genuine packet taken for a replay
    (restarts, partitions, loss) would show here; the chaos runs send no real replays, so the goal is 0.
    Counters restart with a node: a value lower than the last one seen starts a new series."""

    def __init__(self):
        self.last = {}
        self.total = 0

    def sample(self):
        for i in range(1, NODE_COUNT + 1):
            try:
                status, body = get(i, "/metrics")
            except Exception:
                continue
            if status != 200:
                continue
            value = 0
            for line in body.decode(errors="replace").splitlines():
                if line.startswith("aimesh_gossip_rejected_total{") and ('"replayed_packet"' in line or '"stale_packet"' in line):
                    value += int(float(line.rsplit(" ", 1)[1]))
            previous = self.last.get(i, 0)
            self.total += value - previous if value >= previous else value
            self.last[i] = value


def wait_until(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def converged(nodes):
    def check():
        for i in nodes:
            view = peer_statuses(i)
            if view is None or sum(1 for j in nodes if j != i and view.get(f"n{j}") == "healthy") != len(nodes) - 1:
                return False
        return True
    return check


class Load:
    """Bounded load: `json_workers` sequential JSON requests and `stream_workers` sequential streams, each
    against its target node, until stopped. Counts outcomes; a stream that fails before its first byte is
    told apart from one cut after it."""

    def __init__(self, targets, json_workers=3, stream_workers=2, model="m"):
        self.targets, self.model = targets, model
        self.lock = threading.Lock()
        self.counts = {"json_ok": 0, "json_failed": 0, "stream_ok": 0, "stream_failed_before_first_byte": 0,
                       "stream_failed_after_first_byte": 0}
        self.errors = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.worker, args=(t, False), daemon=True)
                        for t in targets for _ in range(json_workers)]
        self.threads += [threading.Thread(target=self.worker, args=(t, True), daemon=True)
                         for t in targets for _ in range(stream_workers)]

    def count(self, key, error=None):
        with self.lock:
            self.counts[key] += 1
            if error and len(self.errors) < 10:
                self.errors.append(error)

    def worker(self, target, stream):
        body = json.dumps({"model": self.model, "stream": stream, "messages": [{"role": "user", "content": "chaos"}]})
        while not self.stop.is_set():
            first_byte = False
            try:
                connection = http.client.HTTPConnection(addr(target), API_PORT, timeout=20)
                connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
                response = connection.getresponse()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
                if stream:
                    data = b""
                    while True:
                        chunk = response.read1(65536)
                        if not chunk:
                            break
                        first_byte = True
                        data += chunk
                    events = [line[6:] for line in data.split(b"\n") if line.startswith(b"data: ")]
                    if not events or events[-1] != b"[DONE]":
                        raise RuntimeError(f"stream ended without [DONE]: {data[-200:]!r}")
                    for event in events[:-1]:
                        if "error" in json.loads(event):
                            raise RuntimeError(f"error event in the stream: {event[:200]!r}")
                    self.count("stream_ok")
                else:
                    json.loads(response.read())["choices"][0]
                    self.count("json_ok")
                connection.close()
            except Exception as error:
                if stream:
                    self.count("stream_failed_after_first_byte" if first_byte else "stream_failed_before_first_byte", f"n{target} stream: {error}")
                else:
                    self.count("json_failed", f"n{target} json: {error}")
                time.sleep(0.05)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


RESULTS = []


def verdict(name, passed, figures):
    RESULTS.append((name, passed))
    print(f"  {'PASS' if passed else 'FAIL'}  {name}: {figures}", flush=True)


def scenario_kill(lab, args):
    print("== kill -9 one node (n3) and one upstream (n2's) under load through n1", flush=True)
    with Load([1]) as load:
        time.sleep(3)
        lab.kill(lab.nodes[3])
        time.sleep(2)
        lab.kill(lab.mocks[2])
        time.sleep(8)
    c = load.counts
    print(f"  requests: {json.dumps(c)}")
    for error in load.errors:
        print(f"    {error}")
    verdict("kill", c["json_failed"] == 0 and c["stream_failed_before_first_byte"] == 0 and c["json_ok"] > 0,
            f"{c['json_failed']} failed non-streaming (goal 0), {c['stream_failed_before_first_byte']} streams failed before "
            f"the first byte (goal 0), {c['stream_failed_after_first_byte']} cut after it")
    lab.start_mock(2)
    lab.start_node(3)
    if not wait_until(converged(range(1, NODE_COUNT + 1)), 30):
        raise RuntimeError("the mesh did not re-converge after restarting n3")


def scenario_partition(lab, args):
    side_a, side_b = [1, 2, 3], [4, 5]
    print(f"== partition {side_a} | {side_b} for {args.partition_seconds} s under load on both sides, then heal", flush=True)
    for group, other in ((side_a, side_b), (side_b, side_a)):
        peers = ", ".join(addr(j) for j in other)
        for i in group:
            lab.nft(i, [f"input ip saddr {{ {peers} }} drop", f"output ip daddr {{ {peers} }} drop"])
    cut = time.monotonic()
    with Load([1, 4]) as load:
        gone = lambda observer, peer: (peer_statuses(observer) or {}).get(peer, "unreachable") == "unreachable"
        split_seen = wait_until(lambda: gone(1, "n4") and gone(4, "n1"), args.partition_seconds)
        detected = time.monotonic() - cut
        time.sleep(max(0, args.partition_seconds - (time.monotonic() - cut)))
        views = {i: peer_statuses(i) for i in (1, 4)}
    c = load.counts
    print(f"  during the split: {json.dumps(c)}; each side saw the other unreachable after {detected:.1f} s; "
          f"at the end n1 saw {views[1]}, n4 saw {views[4]}")
    for error in load.errors:
        print(f"    {error}")
    lab.heal()
    healed = time.monotonic()
    ok = wait_until(converged(range(1, NODE_COUNT + 1)), 60, interval=0.05)
    reconverge = time.monotonic() - healed
    if not ok:
        for i in range(1, NODE_COUNT + 1):
            print(f"    n{i} sees {peer_statuses(i)}")
    verdict("partition: both sides serve", split_seen and c["json_failed"] == 0 and c["stream_failed_before_first_byte"] == 0,
            f"{c['json_ok']} + {c['stream_ok']} served, {c['json_failed']} failed non-streaming, "
            f"{c['stream_failed_before_first_byte']} streams failed before the first byte")
    verdict("partition: re-converged after heal", ok and reconverge <= 5,
            f"every node sees the other four healthy {reconverge:.2f} s after the heal (goal ≤ 5 s)")


def scenario_loss(lab, args):
    for percent in (10, 30):
        print(f"== {percent} % packet loss on every node's input for {args.loss_seconds} s", flush=True)
        rule = f"input iifname \"eth0\" numgen random mod 100 < {percent} drop"
        for i in range(1, NODE_COUNT + 1):
            lab.nft(i, [rule])
        down, suspect, samples = set(), set(), 0
        start = time.monotonic()
        while time.monotonic() - start < args.loss_seconds:
            for i in range(1, NODE_COUNT + 1):
                view = peer_statuses(i) or {}
                samples += 1
                for peer, status in view.items():
                    if status == "suspect":
                        suspect.add((i, peer))
                    elif status != "healthy":
                        down.add((i, peer))
            time.sleep(0.5)
        lab.heal()
        wait_until(converged(range(1, NODE_COUNT + 1)), 30)
        figures = (f"{len(down)} false 'unreachable' (observer, peer) pairs, {len(suspect)} pairs suspected and "
                   f"refuted, over {samples} status reads")
        if percent == 10:
            verdict("loss 10 %: no false positives", not down, figures + " (goal 0)")
        else:
            print(f"  info  loss 30 %: {figures}")


def table_entry(observer, name):
    status, body = get(observer, "/aiproxy/mesh/table")
    for record in json.loads(body)["records"]:
        if record["name"] == name:
            return record["version"], record["incarnation"]
    return None


def scenario_restart(lab, args):
    print("== n2 killed (-9) and restarted with the same key and data directory", flush=True)
    before = table_entry(1, "n2")
    lab.kill(lab.nodes[2])
    wait_until(lambda: (peer_statuses(1) or {}).get("n2") == "unreachable", 30)
    restarted = time.monotonic()
    lab.start_node(2)
    rejoined = wait_until(lambda: (peer_statuses(1) or {}).get("n2") == "healthy", 30, interval=0.05)
    took = time.monotonic() - restarted
    wait_until(lambda: (table_entry(1, "n2") or (0, 0))[0] > before[0], 10)
    after = table_entry(1, "n2")
    verdict("restart with the same key", rejoined and after and after[0] > before[0] and after[1] >= before[1],
            f"healthy again at n1 {took:.2f} s after the restart; record version {before[0]} → {after[0]}, "
            f"incarnation {before[1]} → {after[1]} (never backwards)")
    wait_until(converged(range(1, NODE_COUNT + 1)), 30)


def ledger_spend(lab, key_name):
    """(dollars, rows) the entry nodes billed to the key: rows under the key's name (a serving peer
    records a forward under node:NAME, so nothing is counted twice)."""
    import sqlite3
    total, rows = 0.0, 0
    for i in range(1, NODE_COUNT + 1):
        path = f"{lab.work}/n{i}/ledger.sqlite"
        if not os.path.exists(path):
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        cost, count = db.execute("SELECT COALESCE(SUM(cost), 0), COUNT(*) FROM requests WHERE api_key = ? AND status = 200",
                                 (key_name,)).fetchone()
        db.close()
        total, rows = total + cost, rows + count
    return total, rows


def spend_load(targets, key, seconds, workers=2):
    """Paid requests with the key until `seconds` pass; {status: count}."""
    counts, lock, stop, latencies = {}, threading.Lock(), threading.Event(), []
    body = json.dumps({"model": "paid", "max_tokens": 20, "messages": [{"role": "user", "content": "spend"}]})
    def worker(target):
        while not stop.is_set():
            started = time.monotonic()
            try:
                connection = http.client.HTTPConnection(addr(target), API_PORT, timeout=20)
                connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", "authorization": f"Bearer {key}"})
                response = connection.getresponse()
                response.read()
                status = response.status
                connection.close()
            except Exception:
                status = "error"
            with lock:
                counts[f"n{target} {status}"] = counts.get(f"n{target} {status}", 0) + 1
                if status == 200:
                    latencies.append(time.monotonic() - started)
    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in targets for _ in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    counts["mean_ok_latency_s"] = round(sum(latencies) / len(latencies), 4) if latencies else None
    return counts


def scenario_budget(lab, args):
    budget = 1.0
    print(f"== a mesh key with a ${budget:.2f} daily budget, spent from both sides of a 3|2 partition, then after the heal", flush=True)
    # Mesh keys need the mesh admin's public key in every node's configuration: restart the mesh with it
    # (same keys and data directories), upstreams answering in 50 ms so spend accrues at a steady pace.
    run(lab.binary, "mesh", "init", "--out", f"{lab.work}/admin")
    lab.admin_public_key = open(f"{lab.work}/admin/admin.pub").read().strip()
    lab.mock_latency = "50ms"
    for i in range(1, NODE_COUNT + 1):
        lab.kill(lab.nodes[i]); lab.kill(lab.mocks[i])
    for i in range(1, NODE_COUNT + 1):
        lab.start_mock(i); lab.start_node(i)
    if not wait_until(converged(range(1, NODE_COUNT + 1)), 60):
        raise RuntimeError("the mesh did not converge with the admin key")
    key = run(lab.binary, "keys", "create", "--name", "chaos", "--budget-daily", str(budget), "--admin-key",
              f"{lab.work}/admin/admin.key", "--node", f"http://{addr(1)}:{API_PORT}").strip().splitlines()[-1]
    def accepted(i):
        try:
            connection = http.client.HTTPConnection(addr(i), API_PORT, timeout=5)
            connection.request("GET", "/v1/models", headers={"authorization": f"Bearer {key}"})
            return connection.getresponse().status == 200
        except Exception:
            return False
    if not wait_until(lambda: all(accepted(i) for i in range(1, NODE_COUNT + 1)), 30):
        raise RuntimeError("the key did not reach every node")
    side_a, side_b = [1, 2, 3], [4, 5]
    for group, other in ((side_a, side_b), (side_b, side_a)):
        peers = ", ".join(addr(j) for j in other)
        for i in group:
            lab.nft(i, [f"input ip saddr {{ {peers} }} drop", f"output ip daddr {{ {peers} }} drop"])
    wait_until(lambda: (peer_statuses(1) or {}).get("n4", "unreachable") == "unreachable"
               and (peer_statuses(4) or {}).get("n1", "unreachable") == "unreachable", 30)
    during = spend_load([1, 4], key, args.partition_seconds / 2)
    split_spend, split_rows = ledger_spend(lab, "chaos")
    lab.heal()
    wait_until(converged(range(1, NODE_COUNT + 1)), 30)
    after = spend_load([1, 4], key, 10)
    def ledgers_flushed():
        for i in range(1, NODE_COUNT + 1):
            try:
                status, body = get(i, "/aiproxy/ledger/status")
                if status != 200 or json.loads(body).get("pending_rows", 1) != 0:
                    return False
            except Exception:
                return False
        return True
    wait_until(ledgers_flushed, 10)   # every answered request's row is committed before we add them up
    total, rows = ledger_spend(lab, "chaos")
    # The documented bound (PROTOCOL.md §10): with every node reachable, the mesh can pass a key's budget
    # by what the other entry nodes spend while a node's view of their counters is stale (a record is
    # re-advertised at most once a second and spreads in ~0.2 s: 1.2 s), plus the requests in flight.
    cost = total / rows if rows else 0
    workers, entries, staleness = 2, 2, 1.2
    rate = workers / after["mean_ok_latency_s"] if after.get("mean_ok_latency_s") else 0   # requests/s per entry node
    bound = budget + cost * (rate * staleness * (entries - 1) + workers * entries)
    print(f"  during the split: {json.dumps(during)}")
    print(f"  after the heal:   {json.dumps(after)}")
    verdict("budget: a partition cannot overspend", split_spend <= budget,
            f"${split_spend:.3f} spent by both sides during the split ({split_rows} requests), budget ${budget:.2f}")
    verdict("budget: the mesh-wide total holds after the heal", total <= bound,
            f"${total:.3f} in all ({rows} requests, ${cost:.4f} each); budget ${budget:.2f}, bound ${bound:.3f} "
            f"(+ {rate:.0f} req/s × {staleness} s of another entry node's spend + {workers * entries} in flight)")


# budget last: it restarts the mesh with a mesh admin key (which puts /aiproxy/mesh/table behind signatures).
SCENARIOS = {"kill": scenario_kill, "partition": scenario_partition, "loss": scenario_loss, "restart": scenario_restart,
             "budget": scenario_budget}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--partition-seconds", type=float, default=30)
    parser.add_argument("--loss-seconds", type=float, default=30)
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    for name in chosen:
        if name not in SCENARIOS:
            sys.exit(f"unknown scenario {name}; known: {', '.join(SCENARIOS)}")
    work = tempfile.mkdtemp(prefix="aimesh-chaos-")
    lab = Lab(args.binary, work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        lab.up()
        for i in range(1, NODE_COUNT + 1):
            lab.start_mock(i)
            lab.start_node(i)
        if not wait_until(converged(range(1, NODE_COUNT + 1)), 60):
            raise RuntimeError(f"the five nodes did not converge; logs in {work}")
        print(f"five nodes up in namespaces {PREFIX}-*, converged; logs in {work}", flush=True)
        replays = ReplayWatch()
        replays.sample()
        for name in chosen:
            SCENARIOS[name](lab, args)
            replays.sample()
        verdict("no genuine packet taken for a replay", replays.total == 0,
                f"{replays.total} gossip packets refused as replayed or stale across all scenarios (goal 0)")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        RESULTS.append(("interrupted", False))
    finally:
        lab.down()
        print(f"removed namespaces {', '.join(lab.made)}")
    failed = [name for name, passed in RESULTS if not passed]
    print(f"\n{len(RESULTS) - len(failed)} passed, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
