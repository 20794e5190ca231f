#!/usr/bin/env python3
"""CPU per kind of thread of a command: scripts/thread-cpu.py COMMAND ARGS...

Polls /proc/PID/task/*/stat every 50 ms while COMMAND runs and prints, per thread name (Node's
MainThread, WorkerThread for the codec threads, V8Worker, libuv-worker...), the user and sys
seconds each had at its last sighting. Used for BENCHMARKS.md "Against the goals"."""
import collections, os, subprocess, sys, time

proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
last = {}
hz = os.sysconf('SC_CLK_TCK')
while proc.poll() is None:
    try:
        tasks = os.listdir(f'/proc/{proc.pid}/task')
    except OSError:
        break
    for tid in tasks:
        try:
            stat = open(f'/proc/{proc.pid}/task/{tid}/stat').read()
        except OSError:
            continue
        name = stat[stat.index('(') + 1:stat.rindex(')')]
        fields = stat[stat.rindex(')') + 2:].split()
        last[tid] = (name, int(fields[11]), int(fields[12]))  # utime, stime (clock ticks)
    time.sleep(0.05)
per = collections.defaultdict(lambda: [0, 0, 0])
for name, user, sys_ in last.values():
    per[name][0] += user
    per[name][1] += sys_
    per[name][2] += 1
for name, (user, sys_, n) in sorted(per.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
    print(f'{name:16s} threads {n:3d}  user {user / hz:6.2f} s  sys {sys_ / hz:6.2f} s')
sys.exit(proc.returncode)
