//! Developer and CI tasks. `cargo xtask --help` lists them.

mod bench;
mod container;
mod deb;
mod fuzz;
mod k8s;
mod systemd;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// The nightly that builds the eBPF crate (keep in step with sensor-daemon/build.rs).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";
/// Preinstalled fallback when the dated nightly cannot be fetched.
const FALLBACK_TOOLCHAIN: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM: &str = "/usr/lib/llvm-22";
/// Debian packages: LLVM 22 for bpf-linker; bpftool, iproute2 and systemd
/// (systemd-analyze) for tests; qemu, a static busybox (the VMs' init),
/// binutils (objcopy) and xz (compressed kernel modules) for `vm-test`, xz
/// also for the `.tar.xz` that `tests/history.rs` packs with `tar -cJf`;
/// python3-venv (kubernetes-validate's venv) for `k8s-validate`; podman and
/// runc (the OCI runtime that copes with this host's hybrid cgroups), curl
/// (the host-side probe) and ca-certificates (the image's CA bundle) for
/// `container-build` and `container-test`; dpkg-dev (dpkg-shlibdeps) for
/// `deb`; debootstrap and systemd-container (systemd-nspawn) for
/// `systemd-test`; for the hunt (issue 16): tcpdump and tshark (real
/// captures, and the peers its bench compares with), softflowd and nfdump
/// (real flow exports), nginx-light (real access logs), tcpreplay (tcprewrite maps a
/// capture's test addresses onto real Tor addresses of the fixtures); for the vantage
/// points (issue 17): unbound, dnsmasq-base and bind9-dnsutils (real DNS
/// servers and clients), iperf3 (gateway throughput), iptables (the
/// masquerade of tests/gateway.rs's router namespace). Services are never
/// started by the install (see [`without_service_starts`]).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "bpftool",
    "iproute2",
    "systemd",
    "rsyslog",
    "qemu-system-x86",
    "busybox-static",
    "binutils",
    "xz-utils",
    "python3-venv",
    "podman",
    "runc",
    "curl",
    "ca-certificates",
    "dpkg-dev",
    "debootstrap",
    "systemd-container",
    "tcpdump",
    "tshark",
    "softflowd",
    "nfdump",
    "nginx-light",
    "unbound",
    "dnsmasq-base",
    "bind9-dnsutils",
    "iperf3",
    "tcpreplay",
    "iptables",
];

#[derive(Parser)]
#[command(name = "xtask", about = "torsensor developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every missing prerequisite (idempotent; fast when all is present).
    Setup,
    /// Setup, then build the release binary (target/release/torsensor).
    Build,
    /// Setup, build, and start the sensor (default: embedded Tor exit list).
    /// Arguments after `--` go to `torsensor run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then fmt, clippy (userspace and eBPF), every test, and the
    /// real-kernel tests on Debian's kernels (vm-test).
    Test,
    /// Setup, then the real-kernel tests inside qemu VMs booting Debian's own
    /// kernels (6.1, 6.1 cloud, 6.12 backport), and a table of the results.
    VmTest(vm::VmArgs),
    /// Setup, build, and the Debian package target/deb/torsensor_*.deb
    /// (binary, systemd unit, configuration, rules, copyright); lintian's
    /// verdict if it is installed.
    Deb,
    /// Setup, package, then the package under a real systemd: a cached
    /// debootstrap tree booted with systemd-nspawn, `apt install` of the
    /// .deb, and start/reload/watchdog/stop/sandbox checks.
    SystemdTest,
    /// Setup, then the performance benchmarks (ratios against a baseline
    /// measured in the same run).
    Bench(bench::BenchArgs),
    /// Just the loopback connect+accept storm, printing connections/s (for
    /// comparing hooks by hand).
    Storm {
        #[arg(long, default_value_t = 20_000)]
        connections: usize,
    },
    /// Setup, then every fuzz target (sensor-daemon/fuzz) for a bounded
    /// time, with executions, coverage and findings per target.
    Fuzz(fuzz::FuzzArgs),
    /// Setup, then render the Kustomize base (deploy/kubernetes) and the
    /// example overlay and validate them against the Kubernetes API schemas
    /// (kubernetes-validate --strict, in a venv under target/k8s).
    K8sValidate,
    /// Setup, build the release binary and the container image
    /// (deploy/Containerfile, podman), tagged localhost/torsensor:<version>.
    ContainerBuild,
    /// Setup, build the image, run it with the DaemonSet's security settings
    /// translated to podman flags, check an alert about a host process and
    /// a clean stop.
    ContainerTest,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Task::Setup => setup().map(|_| ()),
        Task::Build => {
            setup()?;
            build_release()
        }
        Task::Run { args } => {
            setup()?;
            build_release()?;
            let mut cmd = Command::new(root.join("target/release/torsensor"));
            cmd.arg("run").args(args);
            eprintln!("xtask: starting {cmd:?} (Ctrl-C stops it)");
            let err = std::os::unix::process::CommandExt::exec(&mut cmd);
            Err(err).context("starting torsensor")
        }
        Task::Test => {
            let tc = setup()?;
            test(&root, &tc)
        }
        Task::VmTest(args) => {
            setup()?;
            vm::run_matrix(&root, &args)
        }
        Task::Deb => {
            setup()?;
            deb::build(&root).map(|_| ())
        }
        Task::SystemdTest => {
            setup()?;
            systemd::run(&root)
        }
        Task::Storm { connections } => {
            println!("{:.0} conn/s", bench::storm(connections)?);
            Ok(())
        }
        Task::Fuzz(args) => fuzz::run_targets(&setup()?, &args),
        Task::Bench(args) => {
            setup()?;
            build_release()?;
            bench::run(&root, &args)
        }
        Task::K8sValidate => {
            setup()?;
            k8s::validate(&root)
        }
        Task::ContainerBuild => {
            setup()?;
            container::build_release_image(&root)
        }
        Task::ContainerTest => {
            setup()?;
            container::test(&root)
        }
    }
}

/// Running under CI (`CI=true`), where a skipped check is a failure.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs a command, failing with its name when it fails.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn stdout_of(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Debian's `tor` (and `tor-gencert`) for the private Tor network test,
/// which runs every tor inside a loopback-only network namespace. No tor
/// may ever run in this machine's own namespace: the package is installed
/// under a `policy-rc.d` that forbids starting services (kept if one is
/// already there), and afterwards no `tor` process may exist.
fn install_tor() -> anyhow::Result<()> {
    let installed = stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", "tor"]))
        .contains("install ok installed");
    if !installed {
        eprintln!("xtask: installing Debian's tor (its service is not started)");
        without_service_starts(|| {
            run(Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends", "tor"])
                .env("DEBIAN_FRONTEND", "noninteractive"))
        })?;
    }
    // Tors of a test in its own namespace are fine; one in ours is not.
    let ours = std::fs::read_link("/proc/self/ns/net")?;
    let here: Vec<String> = stdout_of(Command::new("pgrep").args(["-x", "tor"]))
        .split_whitespace()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns == ours))
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(
        here.is_empty(),
        "a tor process runs in this machine's network namespace (pids {}): stop it; tests run tor only inside loopback-only network namespaces",
        here.join(" ")
    );
    Ok(())
}

/// Runs `install` under a `policy-rc.d` that forbids starting services
/// (kept if one is already there): packages such as tor, nginx and unbound
/// would otherwise start a daemon in this machine's namespace.
fn without_service_starts(install: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# xtask: no service starts while packages are installed\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let result = install();
    if ours {
        std::fs::remove_file(policy)?;
    }
    result
}

/// Installs what is missing; returns the eBPF toolchain to use.
fn setup() -> anyhow::Result<String> {
    // Debian packages.
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        without_service_starts(|| {
            run(Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))
        })?;
    }

    install_tor()?;

    // Stable components for fmt and clippy.
    let installed = stdout_of(Command::new("rustup").args(["component", "list", "--installed"]));
    for component in ["rustfmt", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }

    // The eBPF toolchain: the dated nightly with rust-src (and clippy for the
    // eBPF lint pass); fall back to the preinstalled nightly if it cannot be
    // fetched.
    let toolchain = match ensure_nightly(EBPF_TOOLCHAIN) {
        Ok(()) => EBPF_TOOLCHAIN.to_owned(),
        Err(e) => {
            eprintln!(
                "xtask: WARNING: cannot install {EBPF_TOOLCHAIN} ({e:#}); falling back to the preinstalled `{FALLBACK_TOOLCHAIN}`"
            );
            ensure_nightly(FALLBACK_TOOLCHAIN)?;
            FALLBACK_TOOLCHAIN.to_owned()
        }
    };

    // bpf-linker, built against Debian's LLVM 22.
    let version = stdout_of(Command::new("bpf-linker").arg("--version"));
    if !version.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
        let path = format!("{LLVM}/bin:{}", std::env::var("PATH").unwrap_or_default());
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path))?;
    }
    // SAFETY: single-threaded at this point; child cargo processes read it.
    unsafe { std::env::set_var("TORSENSOR_EBPF_TOOLCHAIN", &toolchain) };
    eprintln!("xtask: prerequisites present (eBPF toolchain {toolchain})");
    Ok(toolchain)
}

fn ensure_nightly(toolchain: &str) -> anyhow::Result<()> {
    let have_toolchain = stdout_of(Command::new("rustup").args(["toolchain", "list"]))
        .lines()
        .any(|l| l.starts_with(&format!("{toolchain}-")));
    let components = if have_toolchain {
        stdout_of(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            toolchain,
        ]))
    } else {
        String::new()
    };
    let has = |c: &str| components.lines().any(|l| l.starts_with(c));
    if !have_toolchain {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            toolchain,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]))?;
    } else if !has("rust-src") || !has("clippy") {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "clippy",
            "--toolchain",
            toolchain,
        ]))?;
    }
    Ok(())
}

fn build_release() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["build", "--release", "--package", "sensor-daemon"]))
}

fn test(root: &Path, toolchain: &str) -> anyhow::Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate only builds for the bpf target, with its own toolchain.
    run(Command::new("cargo").arg(format!("+{toolchain}")).args([
        "clippy",
        "--package",
        "sensor-ebpf",
        "--bins",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
        "target/ebpf-check",
        "--",
        "-D",
        "warnings",
    ]))?;
    fuzz::ci(toolchain)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "xtask: NOTE: not root, so the real-kernel tests will skip (CI runs them as root)"
        );
    }
    run(Command::new("cargo").args(["test", "--workspace", "--exclude", "sensor-ebpf"]))?;
    // Deployment: the Kubernetes manifests against the API schemas, the
    // container image run with the DaemonSet's security settings, and the
    // Debian package installed and run under a real systemd.
    k8s::validate(root)?;
    container::test(root)?;
    systemd::run(root)?;
    // The same kernel tests on the kernels production fleets run.
    vm::run_matrix(root, &vm::VmArgs::default())
}
