//! `cargo xtask k8s-validate`: the Kustomize base in `deploy/kubernetes/`
//! rendered and checked against the Kubernetes API schemas.
//!
//! - The rendering is kustomize's own, the one built into `kubectl`
//!   (`kubectl kustomize`, what `kubectl apply -k` applies). Debian has no
//!   `kustomize` package; `kubectl` comes with this project's machine image
//!   (google-cloud-cli's package). Without it (outside CI only) each resource
//!   file and the ConfigMap the generator would make are validated instead.
//! - The schemas are those `kubernetes-validate` (PyPI, pinned) ships, used
//!   offline from a venv under `target/k8s/venv` (made once, by Debian's
//!   python3 and the PyPI client): `--strict` (unknown fields are errors)
//!   against Kubernetes 1.29 and the newest version the package ships.
//! - Negative checks: the same rendering with an unknown field and with a
//!   wrongly typed one must each be rejected, so a validator that passes
//!   everything cannot go unnoticed.
//! - `deploy/kubernetes/torsensor.toml` (the ConfigMap's file; kustomize
//!   reads only files inside the base) must be `deploy/torsensor.toml`
//!   byte for byte plus the `[metrics]` table the pod needs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{in_ci, run, show};

/// Pinned: its schema set decides what passes.
pub const KUBERNETES_VALIDATE: &str = "1.37.0";
/// The oldest Kubernetes the base must be valid for (every supported
/// managed offering is at or above it).
const OLDEST_KUBERNETES: &str = "1.29.0";
pub const BASE: &str = "deploy/kubernetes";
/// The overlay the README shows; rendered and validated too (with kubectl).
const OVERLAY_EXAMPLE: &str = "deploy/kubernetes-overlay-example";
/// What the base's config adds to `deploy/torsensor.toml`: its TOML lines
/// other than comments and blank lines.
const K8S_ONLY_LINES: &[&str] = &["[metrics]", "listen = \"0.0.0.0:9477\""];

/// The venv with `kubernetes-validate` (and PyYAML, which it uses).
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    /// Makes the venv and installs the pinned package, unless already there.
    pub fn ensure(root: &Path) -> anyhow::Result<Venv> {
        let venv = Venv {
            dir: root.join("target/k8s/venv"),
        };
        let version = Command::new(venv.bin("kubernetes-validate"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if version == KUBERNETES_VALIDATE {
            return Ok(venv);
        }
        eprintln!(
            "xtask: installing kubernetes-validate {KUBERNETES_VALIDATE} into {}",
            venv.dir.display()
        );
        if !venv.bin("python3").exists() {
            let _ = fs::remove_dir_all(&venv.dir);
            run(Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&venv.dir))?;
        }
        run(Command::new(venv.bin("pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("kubernetes-validate=={KUBERNETES_VALIDATE}"),
        ]))?;
        Ok(venv)
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// The newest Kubernetes version whose schemas the package ships.
    fn newest_kubernetes(&self) -> anyhow::Result<String> {
        let out = Command::new(self.bin("python3"))
            .args([
                "-c",
                "import kubernetes_validate.utils as u; print(u.latest_version())",
            ])
            .output()
            .context("asking kubernetes-validate for its newest schema version")?;
        let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || v.split('.').count() != 3 {
            bail!(
                "kubernetes-validate gave no schema version ({v:?}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(v)
    }

    /// `kubernetes-validate --strict -k ... FILE`: Ok(output) when it passed,
    /// Err(output) when it rejected something.
    fn validate(&self, file: &Path, versions: &[&str]) -> anyhow::Result<Result<String, String>> {
        let mut cmd = Command::new(self.bin("kubernetes-validate"));
        cmd.arg("--strict");
        for v in versions {
            cmd.args(["-k", v]);
        }
        cmd.arg(file);
        let out = cmd
            .output()
            .with_context(|| format!("cannot start {}", show(&cmd)))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(if out.status.success() && !text.contains("ERROR") {
            Ok(text)
        } else {
            Err(text)
        })
    }

    /// Parses a (multi-document) YAML text into JSON values, with the
    /// venv's PyYAML (no YAML crate needed on the Rust side).
    pub fn yaml_to_json(&self, yaml: &str) -> anyhow::Result<Vec<Value>> {
        let mut child = Command::new(self.bin("python3"))
            .args([
                "-c",
                "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the venv's python3")?;
        std::io::Write::write_all(&mut child.stdin.take().expect("piped"), yaml.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "YAML does not parse: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

/// A kustomization as `kubectl apply -k` would apply it, or `None` without
/// kubectl.
fn render(root: &Path, dir: &str) -> anyhow::Result<Option<String>> {
    let mut cmd = Command::new("kubectl");
    cmd.args(["kustomize"]).arg(root.join(dir));
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("starting kubectl"),
    };
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            show(&cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Some(String::from_utf8(out.stdout)?))
}

/// Without kubectl: each resource file, and the ConfigMap the generator
/// would make (without the content hash in its name), as one stream.
fn unrendered(root: &Path) -> anyhow::Result<String> {
    let base = root.join(BASE);
    let mut docs = Vec::new();
    for file in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "service.yaml",
        "daemonset.yaml",
    ] {
        docs.push(fs::read_to_string(base.join(file)).with_context(|| format!("{BASE}/{file}"))?);
    }
    let config = fs::read_to_string(base.join("torsensor.toml"))?;
    let map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "torsensor-config", "namespace": "torsensor"},
        "data": {"torsensor.toml": config},
    });
    docs.push(serde_json::to_string(&map)?);
    Ok(docs.join("\n---\n"))
}

/// `deploy/kubernetes/torsensor.toml` is `deploy/torsensor.toml` plus only
/// [`K8S_ONLY_LINES`] (and comments).
fn check_config_copy(root: &Path) -> anyhow::Result<()> {
    let original = fs::read_to_string(root.join("deploy/torsensor.toml"))?;
    let copy = fs::read_to_string(root.join(BASE).join("torsensor.toml"))?;
    let Some(tail) = copy.strip_prefix(&original) else {
        bail!(
            "{BASE}/torsensor.toml does not begin with deploy/torsensor.toml byte for byte: copy the original over it again and re-add the [metrics] table"
        );
    };
    let added: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if added != K8S_ONLY_LINES {
        bail!(
            "{BASE}/torsensor.toml adds {added:?} to deploy/torsensor.toml; only {K8S_ONLY_LINES:?} may differ (change the original instead)"
        );
    }
    Ok(())
}

/// The whole check; prints what it did and how long it took.
pub fn validate(root: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    check_config_copy(root)?;
    eprintln!("xtask: {BASE}/torsensor.toml = deploy/torsensor.toml + [metrics]: ok");
    let venv = Venv::ensure(root)?;
    let newest = venv.newest_kubernetes()?;
    let versions = [OLDEST_KUBERNETES, newest.as_str()];

    let (stream, rendered) = match render(root, BASE)? {
        Some(text) => (text, true),
        None if in_ci() => bail!(
            "kubectl is not on PATH: CI renders the base with its built-in kustomize (kubectl kustomize), as kubectl apply -k does"
        ),
        None => {
            eprintln!(
                "xtask: NOTE: no kubectl here, so the base is not rendered: validating each resource file and the ConfigMap instead"
            );
            (unrendered(root)?, false)
        }
    };
    let docs = venv.yaml_to_json(&stream)?;
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    for want in [
        "Namespace/",
        "ServiceAccount/",
        "ConfigMap/",
        "Service/",
        "DaemonSet/",
    ] {
        if !kinds.iter().any(|k| k.starts_with(want)) {
            bail!(
                "the base renders no {}: {kinds:?}",
                want.trim_end_matches('/')
            );
        }
    }
    if rendered {
        check_rendered(&docs, "ghcr.io/torsensor/torsensor:")?;
    }

    let dir = root.join("target/k8s");
    fs::create_dir_all(&dir)?;
    let good = dir.join("rendered.yaml");
    fs::write(&good, &stream)?;
    match venv.validate(&good, &versions)? {
        Ok(out) => eprint!("{out}"),
        Err(out) => bail!(
            "kubernetes-validate rejected {BASE} (rendering in {}):\n{out}",
            good.display()
        ),
    }

    // The validator must be able to say no: an unknown field (a typo that
    // Kubernetes would silently drop without --strict) and a wrong type.
    for (what, from, to, expect) in [
        (
            "an unknown field",
            "hostPID: true",
            "hostPid: true",
            "'hostPid' was unexpected",
        ),
        (
            "a string where an integer belongs",
            "containerPort: 9477",
            "containerPort: nine",
            "is not of type 'integer'",
        ),
    ] {
        if stream.matches(from).count() != 1 {
            bail!("negative check: {from:?} should occur once in the rendered base");
        }
        let bad = dir.join("broken.yaml");
        fs::write(&bad, stream.replacen(from, to, 1))?;
        match venv.validate(&bad, &versions[..1])? {
            Ok(out) => bail!(
                "kubernetes-validate accepted {what} ({to:?} in {}):\n{out}",
                bad.display()
            ),
            Err(out) if out.contains(expect) => {
                eprintln!("xtask: negative check: {what} ({to:?}) rejected: ok")
            }
            Err(out) => bail!("negative check: {what} rejected, but not for {expect:?}:\n{out}"),
        }
        fs::remove_file(&bad)?;
    }
    if rendered {
        check_overlay_example(root, &venv, &dir, &versions)?;
    }
    println!(
        "k8s-validate: {} objects ({}) valid for Kubernetes {} and {newest} (--strict, kubernetes-validate {KUBERNETES_VALIDATE}); {} in {:.1} s",
        docs.len(),
        kinds.join(", "),
        OLDEST_KUBERNETES,
        if rendered {
            "rendered by kubectl kustomize"
        } else {
            "NOT rendered (no kubectl)"
        },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The README's overlay: valid, and it changes what it says it changes.
fn check_overlay_example(
    root: &Path,
    venv: &Venv,
    dir: &Path,
    versions: &[&str],
) -> anyhow::Result<()> {
    let stream = render(root, OVERLAY_EXAMPLE)?.context("kubectl vanished")?;
    let docs = venv.yaml_to_json(&stream)?;
    let image = "registry.example.internal/security/torsensor:0.1.0";
    check_rendered(&docs, image)?;
    let config = fs::read_to_string(root.join(OVERLAY_EXAMPLE).join("torsensor.toml"))?;
    let map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .context("no ConfigMap")?;
    if map["data"]["torsensor.toml"] != config.as_str() {
        bail!("{OVERLAY_EXAMPLE}: the ConfigMap does not hold the overlay's torsensor.toml");
    }
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet")?;
    let limits = &ds["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    if limits["memory"] != "512Mi" {
        bail!("{OVERLAY_EXAMPLE}: the memory patch did not apply: {limits}");
    }
    let file = dir.join("overlay-example.yaml");
    fs::write(&file, &stream)?;
    match venv.validate(&file, versions)? {
        Ok(_) => {
            eprintln!("xtask: {OVERLAY_EXAMPLE}: valid; image {image}, its own config, 512Mi: ok")
        }
        Err(out) => bail!("kubernetes-validate rejected {OVERLAY_EXAMPLE}:\n{out}"),
    }
    Ok(())
}

/// What the schemas cannot see: references inside the rendering, and the
/// image (`image_prefix`: what the `images:` entry makes of it).
fn check_rendered(docs: &[Value], image_prefix: &str) -> anyhow::Result<()> {
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("checked above");
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("checked above");
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // The generated ConfigMap (hash-suffixed name) is the one mounted.
    let config_name = config["metadata"]["name"].as_str().unwrap_or_default();
    let mounted = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v["configMap"]["name"] == config_name);
    if !config_name.starts_with("torsensor-config-") || !mounted {
        bail!("the DaemonSet does not mount the generated ConfigMap {config_name:?}");
    }
    // Every mount names a volume; every named probe port exists.
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        if !volumes.contains(&m["name"].as_str().unwrap_or_default()) {
            bail!("volumeMount {m} names no volume");
        }
    }
    let ports: Vec<&Value> = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let port = &container[probe]["httpGet"]["port"];
        if !ports
            .iter()
            .any(|p| &p["name"] == port || &p["containerPort"] == port)
        {
            bail!("{probe} uses port {port}, which the container does not declare");
        }
    }
    // The image is the one the `images:` entry sets (overlays change it there).
    if !container["image"]
        .as_str()
        .is_some_and(|i| i.starts_with(image_prefix))
    {
        bail!("image {}, expected {image_prefix}...", container["image"]);
    }
    Ok(())
}
