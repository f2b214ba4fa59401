#!/bin/busybox sh
# /init of capprof's VM test guest (see xtask/src/vm.rs). Mounts what the tracer needs, runs the
# integration tests once per attach mode named on the kernel command line, reports with
# CAPPROF-VM-* lines on the serial console and powers off. Kernel command line parameters:
#   capprof.modes=fentry,kprobe,auto[,tracepoint]   attach modes to test, in order
#   capprof.bench=1                                  measure each mode's cost afterwards
#   capprof.shell=1                                  start a shell instead
#   capprof.test_args=a,b                            arguments for the test binaries

/bin/busybox --install -s /bin
export PATH=/bin HOME=/root TMPDIR=/tmp

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
hostname capprof-vm

# The value of a `name=value` word on the kernel command line.
parameter() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1"=*) echo "${word#*=}" ;; esac
    done
}

yes_no() { if "$@"; then echo yes; else echo no; fi; }

echo "CAPPROF-VM-BOOTED kernel=$(uname -r)"
fentry=$(yes_no grep -q '^cap_capable$' /sys/kernel/tracing/available_filter_functions)
kprobe=$(yes_no test -e /sys/bus/event_source/devices/kprobe/type)
tracepoint=$(yes_no test -d /sys/kernel/tracing/events/capability/cap_capable)
btf=$(yes_no test -r /sys/kernel/btf/vmlinux)
echo "CAPPROF-VM-OFFERS btf=$btf fentry=$fentry kprobe=$kprobe tracepoint=$tracepoint"

if [ "$(parameter capprof.shell)" = 1 ]; then
    echo "capprof VM shell: tests in /tests, programs in /bin; run e.g."
    echo "  CAPPROF_TEST_ATTACH=kprobe CAPPROF_TRIGGER=/bin/capprof-trigger /tests/tracer"
    setsid cttyhack sh
    poweroff -f
fi

# The real CLI on a real kernel: `capprof doctor` loads every attach path and says which work.
/bin/capprof doctor
echo "CAPPROF-VM-DOCTOR exit=$?"

test_args=$(parameter capprof.test_args | tr , ' ')
for mode in $(parameter capprof.modes | tr , ' '); do
    if [ "$mode" = tracepoint ] && [ "$tracepoint" = no ]; then
        echo "CAPPROF-VM-RESULT mode=$mode status=skip detail=the kernel has no capability:cap_capable tracepoint (Linux 6.14+)"
        continue
    fi
    echo "CAPPROF-VM-START mode=$mode"
    failures=""
    for test in /tests/*; do
        echo "--- $test (CAPPROF_TEST_ATTACH=$mode)"
        CI=true CAPPROF_TEST_ATTACH=$mode CAPPROF_TRIGGER=/bin/capprof-trigger RUST_BACKTRACE=1 \
            "$test" $test_args
        status=$?
        [ $status = 0 ] || failures="$failures ${test##*/}:exit-$status"
    done
    if [ -z "$failures" ]; then
        echo "CAPPROF-VM-RESULT mode=$mode status=pass"
    else
        echo "CAPPROF-VM-RESULT mode=$mode status=fail detail=failed:$failures"
    fi
done

if [ "$(parameter capprof.bench)" = 1 ]; then
    for mode in $(parameter capprof.modes | tr , ' '); do
        case "$mode" in
            fentry) offered=$fentry ;;
            kprobe) offered=$kprobe ;;
            tracepoint) offered=$tracepoint ;;
            *) continue ;; # auto measures one of the others again
        esac
        if [ "$offered" != yes ]; then
            echo "CAPPROF-VM-BENCH mode=$mode status=skip"
        elif result=$(/bin/capprof-vm-probe --mode "$mode"); then
            echo "CAPPROF-VM-BENCH mode=$mode status=pass $result"
        else
            echo "CAPPROF-VM-BENCH mode=$mode status=fail $result"
        fi
    done
fi

echo "CAPPROF-VM-DONE"
poweroff -f
