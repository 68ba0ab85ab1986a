//! The pipeline for the local Tor signals: a program start (an
//! `ExecEvent` from its own ring buffer) and a listener (a `ConnEvent`
//! with `FLAG_LISTEN`), to alerts through the same rules as connections.

use std::time::SystemTime;

use sensor_common::{ConnEvent, ExecEvent};

use super::{Now, Pipeline, ProcessSource};
use crate::alert::Alert;
use crate::alert::local::{ExecInput, ListenInput, build_exec, build_listen};
use crate::alert::model::Signal;
use crate::kernel::event::EventError;
use crate::kernel::local::{ExecEventError, ExecStart, Listen};

impl<S: ProcessSource> Pipeline<S> {
    /// The alert for a listener event (`FLAG_LISTEN`), before the rules.
    pub(super) fn listen_alert(
        &mut self,
        ev: &ConnEvent,
        created: SystemTime,
    ) -> Result<Alert, EventError> {
        let listen = Listen::from_event(ev, &self.clock)?;
        let process = listen.process.as_ref().map(|p| self.source.process(p));
        let container = listen
            .process
            .as_ref()
            .and_then(|p| self.source.container(p));
        let port_use = self
            .local
            .port_use(listen.local.port())
            .unwrap_or("configured");
        Ok(build_listen(ListenInput {
            time: listen.time,
            local: listen.local,
            process: process.as_ref(),
            container: container.as_ref(),
            port_use,
            rule: self.rules.for_signal(Signal::Listen),
            sensor: &self.sensor,
            created,
        }))
    }

    /// The alert for a program start, before the rules; `None` when the
    /// kernel matched only the first 15 bytes of a watched name and the
    /// whole name (or the directory) says it is another program (counted
    /// in `exec_unconfirmed`).
    pub fn exec_alert(
        &mut self,
        ev: &ExecEvent,
        created: SystemTime,
    ) -> Result<Option<Alert>, ExecEventError> {
        let start = ExecStart::from_event(ev, &self.clock)?;
        let mut process = self.source.started(&start.process);
        if process.name != start.process.comm {
            // The process started yet another program (a shell's last
            // command) before /proc was read: what /proc says is about
            // that one. Only the kernel's fields describe this start.
            tracing::debug!(
                pid = start.process.tgid,
                "exec: /proc shows {:?}, no longer {:?}",
                process.name,
                start.process.comm
            );
            process = crate::enrich::ProcessInfo {
                user_name: process.user_name,
                ..crate::enrich::ProcessInfo::from_kernel(&start.process)
            };
        }
        let container = self.source.container(&start.process);
        let prefix = self.local.environment_prefix.clone();
        let env_vars = prefix
            .as_deref()
            .and_then(|p| self.source.environment(start.process.tgid, p))
            .unwrap_or_default();
        let program = self
            .local
            .program(
                &start.process.comm,
                process.executable.as_deref(),
                process.args.first().map(String::as_str),
            )
            .map(|p| p.name.clone());
        // The environment counts when the kernel saw the prefix, or /proc
        // shows it (a name hit is not scanned in the kernel).
        let by_env = start.by_env || !env_vars.is_empty();
        let by_name = start.by_name && program.is_some();
        if !by_name && !by_env {
            self.counts.exec_unconfirmed += 1;
            tracing::debug!(
                comm = %start.process.comm,
                executable = process.executable.as_deref().unwrap_or("-"),
                "a watched command name, but not a watched program: not alerted"
            );
            return Ok(None);
        }
        if process.ppid.is_none() && start.ppid != 0 {
            process.ppid = Some(start.ppid);
        }
        Ok(Some(build_exec(ExecInput {
            time: start.time,
            comm: &start.process.comm,
            process: &process,
            container: container.as_ref(),
            by_name,
            by_env,
            program: program.as_deref(),
            env_vars,
            env_bytes: start.env_len,
            env_partial: start.env_partial,
            rule: self.rules.for_signal(Signal::Exec),
            sensor: &self.sensor,
            created,
        })))
    }

    /// What to send for one program start: its alert, if confirmed and a
    /// rule takes it.
    pub fn handle_exec(&mut self, ev: &ExecEvent, now: Now) -> Result<Vec<Alert>, ExecEventError> {
        Ok(match self.exec_alert(ev, now.wall)? {
            Some(alert) => self.decide(alert, now),
            None => Vec::new(),
        })
    }
}
