# Many execs and large anonymous mappings: the kernel's overcommit heuristic asks for
# SYS_ADMIN silently each time, and none of it is a need.
for round in $(seq 100); do
    /bin/true || exit 1
done
dd if=/dev/zero of=/dev/null bs=16M count=8 2>/dev/null || exit 1
[ "$(head -c 33554432 /dev/zero | wc -c)" = 33554432 ]
