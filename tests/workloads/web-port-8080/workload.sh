# A web server on port 8080 with the classic unprivileged-port boundary (1024) in its network
# namespace: binding port 8080 needs nothing.
mkdir -p /www && echo capprof-corpus > /www/index.html
httpd -f -p 8080 -h /www &
server=$!
for attempt in $(seq 50); do
    if [ "$(wget -q -O - http://127.0.0.1:8080/ 2>/dev/null)" = capprof-corpus ]; then
        kill "$server"
        exit 0
    fi
    kill -0 "$server" 2>/dev/null || exit 1
    sleep 0.1
done
exit 1
