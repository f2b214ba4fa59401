# An entrypoint that drops from root to uid/gid 1000 before starting the service: SETGID and
# SETUID (busybox nsenter without a target only changes identity).
exec nsenter -G 1000 -S 1000 sh -c '[ "$(id -u):$(id -g)" = 1000:1000 ]'
