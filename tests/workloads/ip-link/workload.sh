# Reconfigures an interface of its own network namespace: NET_ADMIN.
ip link set dev lo mtu 1400
ip link show dev lo | grep -q 'mtu 1400'
