#!/usr/bin/env python3
# Where one QD1 request spends its time, stage by stage, from the system calls of the three
# processes on its path (docs/performance.md, "Where the time goes"):
#   perf record -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -p BENCH,SERVER,CLIENT -- sleep 1
#   perf script --ns -F comm,pid,tid,cpu,time,event,trace > trace.txt
#   python3 bench/tools/qd1-stages.py trace.txt BENCH_PID CLIENT_PID SERVER_PID
# A chain starts at the bench's kick (eventfd write) and follows the request through the client
# and server IO threads (threads named ibnbd-io*) back to the bench's next kick; chains with a
# second kick inside, or longer than 5 ms (scheduling stalls), are left out. Medians per stage.
import re, sys, statistics
txt, bench, client, server = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ev = []
pat = re.compile(r'^\s*(\S.*?)\s+(\d+)/(\d+)\s+\[\d+\]\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+)')
for line in open(txt):
    m = pat.match(line)
    if not m: continue
    pid, tid, ts, kind, nr = int(m.group(2)), int(m.group(3)), float(m.group(4)), m.group(5), int(m.group(6))
    if pid != bench and not m.group(1).strip().startswith("ibnbd-io"): continue
    ev.append((ts * 1e6, pid, tid, kind, nr))
ev.sort()
WRITE, SENDMSG, EPOLL, PREADV2 = 1, 46, 232, 327
steps = [
  ('kick: bench write(kick eventfd)',            lambda e: e[1] == bench and e[3] == 'enter' and e[4] == WRITE),
  ('client IO thread wakes (epoll_wait returns)', lambda e: e[1] == client and e[3] == 'exit' and e[4] == EPOLL),
  ('client: vring pop + IBNBD encode -> sendmsg', lambda e: e[1] == client and e[3] == 'enter' and e[4] == SENDMSG),
  ('client sendmsg returns',                      lambda e: e[1] == client and e[3] == 'exit' and e[4] == SENDMSG),
  ('server IO thread wakes (epoll_wait returns)', lambda e: e[1] == server and e[3] == 'exit' and e[4] == EPOLL),
  ('server: recv + decode -> preadv2 enter',      lambda e: e[1] == server and e[3] == 'enter' and e[4] == PREADV2),
  ('server: preadv2 (tmpfs copy) returns',        lambda e: e[1] == server and e[3] == 'exit' and e[4] == PREADV2),
  ('server: -> response sendmsg enter',           lambda e: e[1] == server and e[3] == 'enter' and e[4] == SENDMSG),
  ('server sendmsg returns',                      lambda e: e[1] == server and e[3] == 'exit' and e[4] == SENDMSG),
  ('client IO thread wakes (epoll_wait returns)', lambda e: e[1] == client and e[3] == 'exit' and e[4] == EPOLL),
  ('client: recv + readv + used push -> notify write', lambda e: e[1] == client and e[3] == 'enter' and e[4] == WRITE),
  ('bench wakes (first syscall return after notify)', lambda e: e[1] == bench and e[3] == 'exit'),
  ('bench: completion + next submit -> kick write', lambda e: e[1] == bench and e[3] == 'enter' and e[4] == WRITE),
]
samples = [[] for _ in steps]
i, n = 0, len(ev)
ios = 0
while i < n:
    # find a kick
    while i < n and not steps[0][1](ev[i]): i += 1
    if i >= n: break
    t0 = ev[i][0]; prev = t0; times = []
    j = i + 1; ok = True
    for k in range(1, len(steps)):
        while j < n and not steps[k][1](ev[j]):
            # a second kick before the chain completes: not a clean QD1 chain
            if k < len(steps) - 1 and steps[0][1](ev[j]): ok = False; break
            j += 1
        if not ok or j >= n: ok = False; break
        times.append(ev[j][0] - prev); prev = ev[j][0]
        if k < len(steps) - 1: j += 1
    if ok and prev - t0 < 5000:  # drop chains with multi-ms scheduling stalls
        for k, t in enumerate(times): samples[k + 1].append(t)
        ios += 1
    i = j if ok else i + 1
print(f'{ios} complete QD1 chains')
tot = 0
for k in range(1, len(steps)):
    if not samples[k]: continue
    med = statistics.median(samples[k]); mean = statistics.mean(samples[k]); tot += med
    print(f'{steps[k][0]:52s} median {med:7.1f} us  mean {mean:7.1f} us')
print(f'{"sum of medians (one request, kick to kick)":52s} {tot:7.1f} us')
