# Runs a program inside a chroot jail: SYS_CHROOT.
mkdir -p /jail/bin
cp /bin/busybox /jail/bin/busybox
[ "$(chroot /jail /bin/busybox echo jailed)" = jailed ]
