//! `cargo xtask deb`: the Debian package, so that installing the sensor as
//! a service is one command (`apt install ./target/deb/torsensor_*.deb`).
//!
//! Hand-made from a staging tree under `target/deb/` with `dpkg-deb --build
//! --root-owner-group` rather than `cargo-deb`: dpkg-deb is on every Debian
//! system already (no extra tool to build and pin), every file of the
//! package is listed here in one place, and the maintainer scripts are the
//! same `deb-systemd-helper` / `deb-systemd-invoke` snippets debhelper
//! generates, written out so that they can be read. The shared-library
//! dependencies come from `dpkg-shlibdeps`, as a Debian build would compute
//! them.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{run, stdout_of};

const PACKAGE: &str = "torsensor";

/// What the package installs, besides the maintainer scripts.
/// (path in the package, source in the workspace or generated, mode)
fn files(root: &Path, stripped: &Path) -> Vec<(&'static str, Content, u32)> {
    let src = |p: &str| Content::Copy(root.join(p));
    vec![
        ("usr/bin/torsensor", Content::Copy(stripped.into()), 0o755),
        (
            "lib/systemd/system/torsensor.service",
            src("deploy/torsensor.service"),
            0o644,
        ),
        (
            "etc/torsensor/torsensor.toml",
            Content::Text(package_config(root)),
            0o644,
        ),
        (
            "etc/torsensor/rules.d/10-local.toml",
            Content::Text(RULES_EXAMPLE.into()),
            0o644,
        ),
        (
            "etc/logrotate.d/torsensor",
            Content::Text(LOGROTATE.into()),
            0o644,
        ),
        // The rules the binary embeds (it does not read this copy): for
        // mapping rule ids in a SIEM.
        (
            "usr/share/torsensor/rules/tor.toml",
            src("rules/tor.toml"),
            0o644,
        ),
        // The DNS names the binary embeds: the starting point of a file
        // of one's own for `[dns] names`.
        (
            "usr/share/torsensor/rules/tor-dns.toml",
            src("rules/tor-dns.toml"),
            0o644,
        ),
        (
            "usr/share/doc/torsensor/copyright",
            Content::Text(COPYRIGHT.into()),
            0o644,
        ),
        (
            "usr/share/doc/torsensor/PROVENANCE.md",
            src("sensor-daemon/data/PROVENANCE.md"),
            0o644,
        ),
        ("usr/share/doc/torsensor/README.md", src("README.md"), 0o644),
    ]
}

/// The packaged configuration: `deploy/torsensor.toml` (shared with the
/// Kubernetes ConfigMap, which keeps alerts on stdout) and the alert file
/// the unit's `LogsDirectory=` holds.
fn package_config(root: &Path) -> String {
    let base = fs::read_to_string(root.join("deploy/torsensor.toml")).unwrap_or_default();
    format!("{base}{PACKAGE_ONLY}")
}

const PACKAGE_ONLY: &str = "
# --- Debian package only ---------------------------------------------------
# Alerts: one JSON line each (ECS), appended to a file in the directory the
# systemd unit's LogsDirectory= creates; logrotate rotates it daily and
# sends SIGUSR2, which reopens it. Add more [[output]] tables for a SIEM
# (README, \"Outputs\"); without any, alerts go to stdout (the journal).
[[output]]
to = \"file:/var/log/torsensor/alerts.jsonl\"
";

enum Content {
    Copy(PathBuf),
    Text(String),
}

/// Files dpkg keeps when the administrator changed them.
const CONFFILES: &str = "/etc/torsensor/torsensor.toml\n/etc/torsensor/rules.d/10-local.toml\n/etc/logrotate.d/torsensor\n";

/// The operator's rules file the package installs (all comments: it
/// changes nothing until edited; README, "Tuning").
const RULES_EXAMPLE: &str = "\
# Your rules (README, \"Tuning\"): exceptions under the shipped rules, rules
# disabled or added. Every *.toml file here is read in name order after the
# shipped rules; `torsensor rules check` shows the result, and `systemctl
# reload torsensor` applies it. Example:
#
# [[rule]]
# id = \"TORSENSOR-001\"
# [[rule.except]]
# reason = \"this host's own Tor relay (SEC-1234)\"
# expires = \"2027-06-30\"
# when = { executable = [\"/usr/bin/tor\"], user = [\"debian-tor\"] }
";

const LOGROTATE: &str = "\
# Alerts written by the packaged configuration's file output. SIGUSR2 makes
# the sensor reopen the file, and nothing else: unlike `systemctl reload`
# (SIGHUP), it does not refresh every feed, so hosts that rotate at the same
# time do not all fetch the Tor lists at once.
/var/log/torsensor/alerts.jsonl {
\tdaily
\trotate 14
\tcompress
\tdelaycompress
\tmissingok
\tnotifempty
\tpostrotate
\t\tif [ -d /run/systemd/system ]; then systemctl kill --kill-whom=main --signal=SIGUSR2 torsensor.service >/dev/null 2>&1 || true; fi
\tendscript
}
";

const COPYRIGHT: &str = r#"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: torsensor
Comment: Built from the torsensor workspace by `cargo xtask deb`. The binary
 statically links Rust crates from crates.io under their own licenses (MIT,
 Apache-2.0 and compatible; see the workspace's Cargo.lock).

Files: *
Copyright: 2026 the torsensor developers
 2024 The Tor Project, Inc. (the embedded feed snapshot)
License: MIT or Apache-2.0, and CC0-1.0
Comment: The software is MIT or Apache-2.0. The binary also embeds two
 unmodified public data files as its default feed snapshot, used when no
 feed is configured or reachable; they are the CC0-1.0 part:
 .
  exit-addresses_check.torproject.org_2024-03-12.txt
   from https://check.torproject.org/exit-addresses (TorDNSEL exit list),
   sha256 8f250260ab5a3af12b4e909438aa4994fa032ef9f3cb62bc921b46f36031df34
  onionoo_details_running-relays_fp-or-country_2024-03-12.json
   from https://onionoo.torproject.org/details (Onionoo, Tor Metrics),
   sha256 1dd8fba9daa1a7a58eaaa4ff1c2ee828614592b5b76902913b33c25f5977d392
 .
 Where each copy was taken from, and what it contains, is in
 /usr/share/doc/torsensor/PROVENANCE.md. Tor Metrics declares its data
 freely available under a CC0 no-copyright declaration ("the Tor Project
 has waived all copyright and related or neighboring rights in the data");
 the exit list is a list of public relay addresses published by the same
 project. Both are facts about the public Tor network, not software.

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a
 copy of this software and associated documentation files (the "Software"),
 to deal in the Software without restriction, including without limitation
 the rights to use, copy, modify, merge, publish, distribute, sublicense,
 and/or sell copies of the Software, and to permit persons to whom the
 Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included
 in all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
 OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
 MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN
 NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
 DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
 OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE
 USE OR OTHER DEALINGS IN THE SOFTWARE.

License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.

License: CC0-1.0
 On Debian systems, the full text of the CC0 1.0 Universal license is in
 /usr/share/common-licenses/CC0-1.0.
"#;

/// debhelper's dh_installsystemd snippets, tolerant of a system without
/// systemd (no init-system-helpers, or /run/systemd/system absent: the unit
/// is only enabled for the next boot, or not at all). Starting and stopping
/// go through deb-systemd-invoke only, which honours policy-rc.d.
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] || [ \"$1\" = abort-upgrade ] || [ \"$1\" = abort-deconfigure ] || [ \"$1\" = abort-remove ]; then
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		# Only removes a mask created by deb-systemd-helper at removal.
		deb-systemd-helper unmask 'torsensor.service' >/dev/null || true
		# was-enabled defaults to true: a new installation is enabled.
		if deb-systemd-helper --quiet was-enabled 'torsensor.service'; then
			deb-systemd-helper enable 'torsensor.service' >/dev/null || true
		else
			deb-systemd-helper update-state 'torsensor.service' >/dev/null || true
		fi
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n \"$2\" ]; then
			_action=restart
		else
			_action=start
		fi
		# deb-systemd-invoke honours policy-rc.d (an image build can keep
		# the service from starting).
		if command -v deb-systemd-invoke >/dev/null 2>&1; then
			deb-systemd-invoke $_action 'torsensor.service' >/dev/null || true
		fi
	fi
fi
exit 0
";

const PRERM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
	if command -v deb-systemd-invoke >/dev/null 2>&1; then
		deb-systemd-invoke stop 'torsensor.service' >/dev/null || true
	fi
fi
exit 0
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ \"$1\" = remove ] && command -v deb-systemd-helper >/dev/null 2>&1; then
	deb-systemd-helper mask 'torsensor.service' >/dev/null || true
fi
if [ \"$1\" = purge ]; then
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper purge 'torsensor.service' >/dev/null || true
		deb-systemd-helper unmask 'torsensor.service' >/dev/null || true
	fi
	# Feed cache, status.json, spools; the alert file and its rotations.
	rm -rf /var/lib/torsensor /var/log/torsensor
fi
exit 0
";

const DESCRIPTION: &str = "\
Description: host sensor that alerts when this machine talks to Tor (eBPF)
 torsensor watches every TCP connect and accept with eBPF programs and
 matches the peer, in the kernel, against the Tor Project's lists of relay
 OR addresses and exit addresses, refreshed at run time. Each hit becomes
 one JSON alert (ECS, OCSF or Falco fields) naming the process, written to
 a file, syslog, Splunk HEC, Elasticsearch or any HTTPS endpoint.
 .
 The package installs a hardened systemd unit (Type=notify with a
 watchdog) and starts it with the configuration in
 /etc/torsensor/torsensor.toml.
";

/// Builds the release binary and the package; returns the `.deb`'s path.
pub fn build(root: &Path) -> anyhow::Result<PathBuf> {
    crate::build_release()?;
    let version = workspace_version(root)?;
    let arch = stdout_of(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_owned();
    if arch.is_empty() {
        bail!("dpkg --print-architecture printed nothing: is this Debian?");
    }
    let out_dir = root.join("target/deb");
    // target/deb/build/debian/{control,torsensor/}: the layout
    // dpkg-shlibdeps expects.
    let build = out_dir.join("build");
    let _ = fs::remove_dir_all(&build);
    let pkg = build.join("debian").join(PACKAGE);
    fs::create_dir_all(pkg.join("DEBIAN"))?;

    // Stripped: debug symbols are half the binary and of no use in a
    // package (lintian: unstripped-binary-or-object).
    let stripped = out_dir.join("torsensor.stripped");
    run(Command::new("strip")
        .args(["--strip-unneeded", "-o"])
        .arg(&stripped)
        .arg(root.join("target/release/torsensor")))?;

    for (path, content, mode) in files(root, &stripped) {
        let dest = pkg.join(path);
        fs::create_dir_all(dest.parent().expect("a file path"))?;
        match content {
            Content::Copy(from) => {
                fs::copy(&from, &dest).with_context(|| format!("copying {}", from.display()))?;
            }
            Content::Text(text) => fs::write(&dest, text)?,
        }
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
    }
    // The changelog a native package ships (lintian: no-changelog).
    let changelog = pkg.join("usr/share/doc/torsensor/changelog.gz");
    // Dated by the last commit, so that the same tree gives the same text.
    let when = stdout_of(Command::new("git").args(["log", "-1", "--format=%ct"]));
    let date = stdout_of(
        Command::new("date")
            .args(["-R", "-u", "-d"])
            .arg(format!("@{}", when.trim())),
    );
    let text = format!(
        "torsensor ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask deb from the torsensor workspace.\n\n -- torsensor developers <torsensor@example.invalid>  {}\n",
        date.trim()
    );
    gzip_to(text.as_bytes(), &changelog)?;
    fs::set_permissions(&changelog, fs::Permissions::from_mode(0o644))?;

    fs::write(
        build.join("debian/control"),
        "Source: torsensor\n\nPackage: torsensor\nArchitecture: any\n",
    )?;
    let shlibs = stdout_of(
        Command::new("dpkg-shlibdeps")
            .args(["-O", "debian/torsensor/usr/bin/torsensor"])
            .current_dir(&build),
    );
    let depends = shlibs
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends (is dpkg-dev installed?)")?
        .to_owned();
    fs::remove_file(build.join("debian/control"))?;
    // procps: /bin/kill, the unit's ExecReload (not in a minimal system).

    let installed_kib = du_kib(&pkg)?;
    let control = format!(
        "Package: {PACKAGE}\nVersion: {version}\nArchitecture: {arch}\n\
         Maintainer: torsensor developers <torsensor@example.invalid>\n\
         Installed-Size: {installed_kib}\nDepends: {depends}, procps\n\
         Recommends: ca-certificates\nSection: net\nPriority: optional\n{DESCRIPTION}"
    );
    let debian = pkg.join("DEBIAN");
    for (name, text, mode) in [
        ("control", control.as_str(), 0o644),
        ("conffiles", CONFFILES, 0o644),
        ("postinst", POSTINST, 0o755),
        ("prerm", PRERM, 0o755),
        ("postrm", POSTRM, 0o755),
    ] {
        fs::write(debian.join(name), text)?;
        fs::set_permissions(debian.join(name), fs::Permissions::from_mode(mode))?;
    }
    md5sums(&pkg)?;

    let deb = out_dir.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zxz"])
        .arg(&pkg)
        .arg(&deb))?;
    eprintln!("xtask: built {}", deb.display());
    lintian(&deb);
    Ok(deb)
}

/// Runs lintian when it is installed and prints what it says; it informs,
/// it does not fail the build.
fn lintian(deb: &Path) {
    let Ok(out) = Command::new("lintian")
        .args(["--no-tag-display-limit", "--info"])
        .arg(deb)
        .output()
    else {
        eprintln!("xtask: lintian is not installed (apt-get install lintian to check the package)");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let tags: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: ") || l.starts_with("I: "))
        .collect();
    if tags.is_empty() {
        eprintln!("xtask: lintian: no tags");
    } else {
        eprintln!("xtask: lintian ({} tags):", tags.len());
        for tag in tags {
            eprintln!("  {tag}");
        }
    }
}

fn workspace_version(root: &Path) -> anyhow::Result<String> {
    let text = fs::read_to_string(root.join("Cargo.toml"))?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(v) = line.strip_prefix("version") {
            return Ok(v
                .trim_start_matches([' ', '='])
                .trim_matches('"')
                .to_owned());
        }
    }
    bail!("no version in [workspace.package] of Cargo.toml")
}

fn gzip_to(data: &[u8], dest: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(fs::File::create(dest)?)
        .spawn()
        .context("gzip")?;
    child.stdin.take().expect("piped").write_all(data)?;
    if !child.wait()?.success() {
        bail!("gzip failed");
    }
    Ok(())
}

fn du_kib(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in walk(dir)? {
        total += fs::symlink_metadata(&entry)?.len().div_ceil(1024);
    }
    Ok(total)
}

/// Every file under `dir` except `DEBIAN/`, sorted.
fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n == "DEBIAN") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn md5sums(pkg: &Path) -> anyhow::Result<()> {
    let files = walk(pkg)?;
    let rel: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(pkg)
                .expect("under pkg")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let out = Command::new("md5sum")
        .args(&rel)
        .current_dir(pkg)
        .output()
        .context("md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed");
    }
    let path = pkg.join("DEBIAN/md5sums");
    fs::write(&path, out.stdout)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}
