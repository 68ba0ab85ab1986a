//! Builds the kernel programs (`sensor-ebpf`) for the bpf target with the
//! pinned nightly toolchain and bpf-linker, so that a plain `cargo build` of
//! the daemon produces one self-contained binary.

/// The nightly that builds the eBPF crate (see README, "Toolchain").
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TORSENSOR_EBPF_TOOLCHAIN");
    let toolchain =
        std::env::var("TORSENSOR_EBPF_TOOLCHAIN").unwrap_or_else(|_| EBPF_TOOLCHAIN.to_owned());
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sensor-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sensor-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
