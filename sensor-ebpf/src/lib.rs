#![no_std]
// This file exists only so that sensor-daemon can name this package as a
// build-dependency (aya-build rebuilds the eBPF object when it changes). The
// kernel programs are the `sensor-ebpf` binary in `main.rs`.
