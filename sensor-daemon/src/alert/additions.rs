//! Additions to an alert from other sources than its own: the flow's
//! Community ID and the container of its process.

use super::model::{Alert, Container, ContainerDetails, Orchestrator, OrchestratorResource};
use crate::enrich::container::ContainerInfo;

impl Alert {
    /// Sets `network.community_id` (Community ID v1, seed 0) from the
    /// endpoints and the transport.
    /// Only a connection (source, destination and network) has one.
    pub fn add_community_id(&mut self) {
        let (Some(src), Some(dst), Some(network)) =
            (self.source, self.destination, self.network.as_mut())
        else {
            return;
        };
        let id = crate::alert::community_id::v1(
            0,
            src.ip,
            dst.ip,
            network.iana_number,
            Some((src.port, dst.port)),
        );
        network.community_id = Some(id);
    }

    /// Sets ECS `container.id`/`container.runtime` and, for a pod,
    /// `orchestrator.type: kubernetes`, `orchestrator.resource.{type: pod,
    /// id, name}`, `orchestrator.namespace` and `container.name` (names as
    /// the kubelet's log directories give them). The QoS class and cgroup
    /// path, which ECS has no field for, go to `torsensor.container`.
    pub fn add_container(&mut self, info: &ContainerInfo) {
        self.container = Some(Container {
            id: info.id.clone(),
            name: info.name.clone(),
            runtime: info.runtime,
        });
        if let Some(uid) = &info.pod_uid {
            self.orchestrator = Some(Orchestrator {
                kind: "kubernetes".into(),
                namespace: info.pod_namespace.clone(),
                resource: OrchestratorResource {
                    kind: "pod".into(),
                    id: Some(uid.clone()),
                    name: info.pod_name.clone(),
                },
            });
        }
        self.torsensor.container = Some(ContainerDetails {
            cgroup_path: info.cgroup_path.clone(),
            qos: info.qos,
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::alert::test_support::connection_alert;
    use std::time::UNIX_EPOCH;

    #[test]
    fn community_id_of_the_spec_example() {
        let mut alert = connection_alert(
            1,
            ("128.232.110.120", 34855),
            ("66.35.250.204", 80),
            UNIX_EPOCH,
        );
        alert.add_community_id();
        assert_eq!(
            alert.network.as_ref().unwrap().community_id.as_deref(),
            Some("1:LQU9qZlK+B5F3KDmev6m5PMibrg=")
        );
    }
}
