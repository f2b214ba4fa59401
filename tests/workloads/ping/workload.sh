# ping opens a raw ICMP socket (busybox has no unprivileged-ping fallback): NET_RAW.
ping -c 1 -W 2 127.0.0.1
