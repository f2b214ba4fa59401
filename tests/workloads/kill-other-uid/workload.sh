# Stops a worker that runs as uid 1000: KILL, and SETUID to start that worker as uid 1000
# (a root shell has no other way to get a process of another uid).
nsenter -S 1000 sleep 60 &
worker=$!
for attempt in $(seq 50); do
    grep -q '^Uid:[[:space:]]*1000[[:space:]]' "/proc/$worker/status" 2>/dev/null && break
    kill -0 "$worker" 2>/dev/null || exit 1
    sleep 0.1
done
grep -q '^Uid:[[:space:]]*1000[[:space:]]' "/proc/$worker/status" || exit 1
kill "$worker" || exit 1
wait "$worker"
[ $? -eq 143 ]
