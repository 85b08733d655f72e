#!/bin/bash
# Sample the CPU time (user + system, seconds) of a process and its children every 30 s, with
# the load average: robust accounting of a long run on a machine shared with other jobs.
# Usage: benchmarks/cpu_time.sh PID > cpu.log   (the last line is the run's CPU time)
main=$1
while kill -0 "$main" 2>/dev/null; do
  ticks=0
  for pid in "$main" $(pgrep -P "$main"); do
    [ -r "/proc/$pid/stat" ] && ticks=$((ticks + $(awk '{print $14+$15+$16+$17}' "/proc/$pid/stat")))
  done
  echo "$(date +%H:%M:%S) $(awk "BEGIN{print $ticks/$(getconf CLK_TCK)}") $(cut -d' ' -f1-3 /proc/loadavg)"
  sleep 30
done
