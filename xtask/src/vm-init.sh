#!/bin/busybox sh
# PID 1 of a `cargo xtask vm-test` VM (xtask/src/vm.rs writes the initramfs
# around it, with /vm.env for what differs per kernel). Results go to the
# serial console; the host reads the lines marked below.
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /tmp and /run stay on the initramfs itself (already in memory and
# writable): a tmpfs over /tmp would hide binaries built under /tmp.
chmod 1777 /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /var/run/netns
. /vm.env
for m in $VM_MODULES; do
    insmod "$m" || echo "vm: insmod $m failed"
done
ip link set lo up
export CI=true
echo "vm: kernel $(uname -r), TORSENSOR_EXPECT_PLAN=${TORSENSOR_EXPECT_PLAN-(unset)}"

# Kernel messages from here on go to the ring buffer only (they would cut
# through the test output), printed after the tests.
dmesg -n 1
dmesg -c >/dev/null

timeout 120 "$VM_SENSOR" hooks >/tmp/hooks.out 2>/tmp/hooks.err
hooks=$?
sed 's/^/hooks stdout: /' /tmp/hooks.out
sed 's/^/hooks stderr: /' /tmp/hooks.err

tests=0
for t in $VM_TESTS; do
    "$t" $VM_TEST_ARGS 2>&1 || tests=$?
done

echo "vm: kernel log during the tests:"
dmesg
echo "TORSENSOR-VM-RESULT hooks=$hooks tests=$tests"
# Let the UART drain before the power goes.
sleep 1
poweroff -f
