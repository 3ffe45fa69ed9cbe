#!/usr/bin/env python3
"""Where a rolling replacement of pods spends its time, as the API shows it to a watcher.

  pod-timeline.py watch OUT KUBECTL...    appends one JSON line per pod event of the watch
                                          `KUBECTL get pods -w --output-watch-events -o json`
                                          to OUT, stamped with this machine's clock, until killed
  pod-timeline.py report OUT [T0]         for each pod name whose pod was replaced after T0 (unix
                                          seconds), the steps from the old pod's deletion to the
                                          new pod's Ready; prints each step's median and min-max

Times are when the watch saw each change (the kubelet's status writes, the operator's
requests), finer than the API's whole-second timestamps. Init containers are named by role:
the first init container that runs to completion is `init`, a restartable one is `sidecar`.
"""
import json
import signal
import statistics
import subprocess
import sys
import time


def watch(out, kubectl):
    cmd = kubectl + ["get", "pods", "-w", "--output-watch-events", "-o", "json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    signal.signal(signal.SIGTERM, lambda *_: (proc.terminate(), sys.exit(0)))
    decoder, buf = json.JSONDecoder(), ""
    with open(out, "a", buffering=1) as f:
        for chunk in iter(lambda: proc.stdout.readline(), ""):
            buf += chunk
            while True:
                buf = buf.lstrip()
                try:
                    event, end = decoder.raw_decode(buf)
                except ValueError:
                    break
                buf = buf[end:]
                f.write(json.dumps(summary(time.time(), event)) + "\n")


def states(statuses):
    """Each container's state: waiting, running (and ready) or terminated."""
    out = {}
    for c in statuses or []:
        st = c.get("state") or {}
        kind = next(iter(st), "unknown")
        out[c["name"]] = kind + ("+ready" if kind == "running" and c.get("ready") else "")
    return out


def summary(t, event):
    pod = event.get("object") or {}
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    restartable = {c["name"] for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"}
    return {
        "t": t,
        "type": event.get("type"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "deleting": bool(meta.get("deletionTimestamp")),
        "node": spec.get("nodeName"),
        "ready": ready,
        "init": {("sidecar:" if n in restartable else "init:") + n: s for n, s in states(status.get("initContainerStatuses")).items()},
        "main": states(status.get("containerStatuses")),
    }


STEPS = [
    ("old pod deleted → gone", "deleted", "gone"),
    ("gone → new pod made", "gone", "created"),
    ("made → scheduled", "created", "scheduled"),
    ("scheduled → init done", "scheduled", "init"),
    ("init done → sidecar running", "init", "sidecar"),
    ("sidecar running → game running", "sidecar", "game"),
    ("game running → pod Ready", "game", "ready"),
    ("old pod deleted → new pod Ready", "deleted", "ready"),
]


def report(out, t0):
    pods = {}  # uid → its events
    for line in open(out):
        e = json.loads(line)
        if e["uid"]:
            pods.setdefault(e["uid"], []).append(e)
    by_name = {}
    for uid, events in pods.items():
        by_name.setdefault(events[0]["name"], []).append(events)
    moments = []
    for name, lives in by_name.items():
        lives.sort(key=lambda ev: ev[0]["t"])
        for old, new in zip(lives, lives[1:]):
            m = {}
            first = lambda evs, pred: next((e["t"] for e in evs if pred(e)), None)
            m["deleted"] = first(old, lambda e: e["deleting"])
            m["gone"] = first(old, lambda e: e["type"] == "DELETED")
            m["created"] = new[0]["t"]
            m["scheduled"] = first(new, lambda e: e["node"])
            m["init"] = first(new, lambda e: any(k.startswith("init:") and v == "terminated" for k, v in e["init"].items()))
            m["sidecar"] = first(new, lambda e: any(k.startswith("sidecar:") and v.startswith("running") for k, v in e["init"].items()))
            m["game"] = first(new, lambda e: e["main"] and all(v.startswith("running") for v in e["main"].values()))
            m["ready"] = first(new, lambda e: e["ready"])
            if m["deleted"] and m["deleted"] >= t0:
                moments.append((name, m))
    if not moments:
        print("no pod was replaced")
        return
    print(f"{len(moments)} pods replaced; seconds per step, median (min-max), as the watch saw them:")
    for label, a, b in STEPS:
        d = [m[b] - m[a] for _, m in moments if m.get(a) is not None and m.get(b) is not None]
        if d:
            print(f"  {label:34} {statistics.median(d):5.2f} ({min(d):.2f}-{max(d):.2f})  n={len(d)}")
    starts = sorted(m["deleted"] for _, m in moments)
    ends = sorted(m["ready"] for _, m in moments if m.get("ready"))
    if ends:
        print(f"  first deletion → last Ready {ends[-1] - starts[0]:.2f} s; gaps between one Ready and the next deletion: "
              + ", ".join(f"{s - e:.2f}" for e, s in zip(ends, starts[1:])))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "watch":
        watch(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "report":
        report(sys.argv[2], float(sys.argv[3]) if len(sys.argv) == 4 else 0.0)
    else:
        sys.exit(__doc__)
