"""Summarises a callgrind profile per request: instructions (Ir) in all, by object, and the functions with the
most instructions of their own (self cost; a call's cost is counted in the callee), names demangled.
    python3 scripts/lib/callgrind-summary.py FILE REQUESTS [TOP] [--callers NAME_PART]
With --callers, lists who calls the functions whose name (mangled, or demangled as the summary prints it)
contains NAME_PART: instructions spent in those calls (inclusive) and calls, per request."""
import collections
import re
import shutil
import subprocess
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
callers_of = sys.argv[sys.argv.index("--callers") + 1] if "--callers" in sys.argv else None
if callers_of in args:
    args.remove(callers_of)
path, requests = args[0], float(args[1])
top = int(args[2]) if len(args) > 2 else 30

names = {}          # (kind, id) -> name; callgrind writes a name once and then only its id
self_cost = collections.Counter()
object_cost = collections.Counter()
object_of = {}
calls_into = collections.defaultdict(lambda: [0, 0])   # (callee, caller) -> [inclusive Ir, calls]
function = obj = callee = None
call_count = 0
pending_call = False
entry = re.compile(r"(c?(?:fn|ob|fl|fi|fe))=\((\d+)\)(?:\s+(.*))?")
with open(path, errors="replace") as profile:
    for line in profile:
        line = line.rstrip("\n")
        match = entry.match(line)
        if match:
            kind, ident, name = match.groups()
            base = kind.lstrip("c")
            if base in ("fi", "fe"):
                base = "fl"
            if name is not None:
                names[(base, ident)] = name
            resolved = names.get((base, ident), ident)
            if kind == "ob":
                obj = resolved
            elif kind == "fn":
                function = resolved
                object_of.setdefault(function, obj)
            elif kind == "cfn":
                callee = resolved
            continue
        if line.startswith("calls="):
            call_count = int(line[6:].split()[0])
            pending_call = True
            continue
        if line and (line[0].isdigit() or line[0] in "+-*"):
            fields = line.split()
            if len(fields) < 2:
                continue
            cost = int(fields[1])
            if pending_call:
                pending_call = False
                if callers_of and callee:
                    record = calls_into[(callee, function)]
                    record[0] += cost
                    record[1] += call_count
                continue
            self_cost[function] += cost
            object_cost[object_of.get(function) or obj] += cost

demangler = shutil.which("swift-demangle") or (shutil.which("swift") and "swift demangle")


def demangle(symbols):
    symbols = list(symbols)
    if not demangler or not symbols:
        return symbols
    command = demangler.split() + ["--simplified", "--compact"]
    try:
        out = subprocess.run(command, input="\n".join(symbols), capture_output=True, text=True, timeout=60).stdout.splitlines()
        return out if len(out) == len(symbols) else symbols
    except (OSError, subprocess.SubprocessError):
        return symbols


total = sum(self_cost.values())
print(f"{total / requests:,.0f} instructions per request ({total:,} over {requests:,.0f} requests)")
print()
print(f"{'share':>7} {'per request':>12}  object")
for name, cost in object_cost.most_common(8):
    print(f"{100 * cost / total:6.2f}% {cost / requests:12,.0f}  {(name or '?').rsplit('/', 1)[-1]}")
print()
print(f"{'share':>7} {'per request':>12}  function (self)")
rows = self_cost.most_common(top)
for (name, cost), pretty in zip(rows, demangle(name or "?" for name, _ in rows)):
    where = (object_of.get(name) or "?").rsplit("/", 1)[-1]
    label = pretty if not pretty.startswith("0x") else f"{pretty} in {where}"
    print(f"{100 * cost / total:6.2f}% {cost / requests:12,.0f}  {label[:150]}")
if callers_of:
    callees = sorted({callee for callee, _ in calls_into})
    matching = {raw for raw, pretty in zip(callees, demangle(callees)) if callers_of in raw or callers_of in pretty}
    print()
    print(f"calls into functions named like {callers_of!r}: inclusive instructions and calls per request, by caller")
    rows = sorted(((key, value) for key, value in calls_into.items() if key[0] in matching), key=lambda item: -item[1][0])[:top]
    for ((_, caller), (cost, count)), pretty in zip(rows, demangle(caller or "?" for (_, caller), _ in rows)):
        print(f"{cost / requests:12,.0f} {count / requests:8.1f}  {pretty[:150]}")
