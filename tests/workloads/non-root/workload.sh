# A service running as uid 1000: it serves on port 8080 and tries privileged things that fail
# and that it copes with. Capabilities in cap_add would not reach a non-root process anyway.
[ "$(id -u)" = 1000 ] || exit 1
ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1
chown 0 /fixtures/owned-by-1000 2>/dev/null
httpd -f -p 8080 -h /fixtures &
server=$!
for attempt in $(seq 50); do
    if [ "$(wget -q -O - http://127.0.0.1:8080/index.html 2>/dev/null)" = capprof-corpus ]; then
        kill "$server"
        exit 0
    fi
    kill -0 "$server" 2>/dev/null || exit 1
    sleep 0.1
done
exit 1
