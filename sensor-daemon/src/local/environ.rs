//! The watched bindings of a process's environment, from
//! `/proc/PID/environ`. Only variables with the watched prefix are kept:
//! the rest of an environment (tokens, passwords) never leaves this
//! function.

use std::path::Path;

/// Most bindings kept (tor sets about ten `TOR_PT_*` variables).
const MAX_BINDINGS: usize = 32;
/// Longest binding kept (a longer value is cut, marked with `...`).
const MAX_BINDING_BYTES: usize = 256;

/// The `NAME=value` bindings of `environ` (NUL-separated) whose name
/// starts with `prefix`, in order, at most 32, each at most 256 bytes.
pub fn watched_bindings(environ: &[u8], prefix: &str) -> Vec<String> {
    environ
        .split(|b| *b == 0)
        .filter(|var| var.starts_with(prefix.as_bytes()) && var.contains(&b'='))
        .take(MAX_BINDINGS)
        .map(|var| {
            let text = String::from_utf8_lossy(var);
            if text.len() > MAX_BINDING_BYTES {
                let mut end = MAX_BINDING_BYTES;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}...", &text[..end])
            } else {
                text.into_owned()
            }
        })
        .collect()
}

/// The watched bindings of process `pid` under `proc_root`; `None` when
/// its environment cannot be read (the process is gone, or a kernel
/// thread).
pub fn read(proc_root: &Path, pid: u32, prefix: &str) -> Option<Vec<String>> {
    let bytes = std::fs::read(proc_root.join(pid.to_string()).join("environ")).ok()?;
    Some(watched_bindings(&bytes, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_prefix_leaves() {
        let env = b"HOME=/root\0TOR_PT_MANAGED_TRANSPORT_VER=1\0SECRET=hunter2\0TOR_PT_CLIENT_TRANSPORTS=obfs4\0XTOR_PT_=no\0TOR_PT_NOVALUE\0";
        assert_eq!(
            watched_bindings(env, "TOR_PT_"),
            [
                "TOR_PT_MANAGED_TRANSPORT_VER=1",
                "TOR_PT_CLIENT_TRANSPORTS=obfs4"
            ]
        );
        let long = format!("TOR_PT_X={}\0", "a".repeat(1000));
        let got = watched_bindings(long.as_bytes(), "TOR_PT_");
        assert_eq!(got[0].len(), MAX_BINDING_BYTES + 3);
        assert!(watched_bindings(b"", "TOR_PT_").is_empty());
    }

    #[test]
    fn our_own_environment_is_readable() {
        let mine = read(Path::new("/proc"), std::process::id(), "PATH");
        assert!(mine.is_some_and(|b| b.iter().any(|v| v.starts_with("PATH="))));
        assert_eq!(read(Path::new("/nonexistent"), 1, "X"), None);
    }
}
