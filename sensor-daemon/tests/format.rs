//! Golden files for the alert formats: fixed ECS alerts (as the alert model
//! serializes them, in `tests/golden/<case>.ecs.json`) are read as alerts,
//! enriched and rendered, and each result must equal its checked-in file
//! byte for byte.
//!
//! After an intended change, rewrite the expected files with
//! `UPDATE_GOLDEN=1 cargo test -p sensor-daemon --test format` and review
//! the diff.

use std::path::{Path, PathBuf};

use serde_json::Value;

use sensor_daemon::alert::falco::{self, Priority};
use sensor_daemon::alert::{Alert, ecs, ocsf};
use sensor_daemon::enrich::container::{ContainerInfo, Qos, Runtime};

const CASES: &[&str] = &[
    "egress_ipv4_host",
    "ingress_ipv6_container",
    "egress_audit_failed_no_process",
    "egress_socks_local",
    "exec_tor_by_name",
    "exec_transport_by_environment",
    "listen_socks_port",
    "hunt_flow_pcap",
    "hunt_web_requests_forwarded",
    "dns_onion_leak",
    "dns_bridges_via_resolver",
    "gateway_outbound_hit",
    "gateway_inbound_flow_end",
    "collector_outbound_ipfix",
    "collector_inbound_ipfix",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn container() -> ContainerInfo {
    ContainerInfo {
        id: "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899".into(),
        runtime: Some(Runtime::Containerd),
        pod_uid: Some("7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f".into()),
        qos: Some(Qos::Burstable),
        cgroup_path: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7c1d2e3f_4a5b_4c6d_8e9f_0a1b2c3d4e5f.slice/cri-containerd-3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899.scope".into(),
        ..ContainerInfo::default()
    }
}

struct Rendered {
    enriched: Value,
    ocsf: Value,
    falco: Value,
}

fn render(case: &str) -> Rendered {
    let path = golden_dir().join(format!("{case}.ecs.json"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut alert: Alert =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{case}: not an alert: {e}"));
    alert.add_community_id();
    if case.contains("container") {
        alert.add_container(&container());
    }
    Rendered {
        ocsf: ocsf::render(&alert),
        falco: falco::render(&alert),
        enriched: ecs::render(&alert),
    }
}

/// Compares `value` with `tests/golden/<name>` exactly (pretty JSON plus a
/// newline), or rewrites the file when `UPDATE_GOLDEN=1`.
fn golden(name: &str, value: &Value) {
    let path = golden_dir().join(name);
    let text = serde_json::to_string_pretty(value).unwrap() + "\n";
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e} (create it with UPDATE_GOLDEN=1)",
            path.display()
        )
    });
    assert!(
        expected == text,
        "{} differs from the output; if the change is intended, rerun with UPDATE_GOLDEN=1\n--- expected\n{expected}\n--- got\n{text}",
        path.display()
    );
}

#[test]
fn golden_outputs() {
    for case in CASES {
        let r = render(case);
        golden(&format!("{case}.enriched.json"), &r.enriched);
        golden(&format!("{case}.ocsf.json"), &r.ocsf);
        golden(&format!("{case}.falco.json"), &r.falco);
    }
}

fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(doc, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

/// No null anywhere: absent fields are left out, not written as null.
fn assert_no_nulls(doc: &Value, at: &str) {
    match doc {
        Value::Null => panic!("null at {at}"),
        Value::Object(m) => {
            for (k, v) in m {
                assert_no_nulls(v, &format!("{at}.{k}"));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                assert_no_nulls(v, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

/// The cases of one signal: connections, program starts or listeners.
fn cases_of(prefix: &[&str]) -> impl Iterator<Item = &'static &'static str> {
    let prefix: Vec<String> = prefix.iter().map(|p| p.to_string()).collect();
    CASES
        .iter()
        .filter(move |c| prefix.iter().any(|p| c.starts_with(p.as_str())))
}

#[test]
fn ocsf_has_the_required_network_activity_attributes() {
    for case in cases_of(&["egress", "ingress"]) {
        let o = render(case).ocsf;
        assert_no_nulls(&o, case);
        for field in [
            "category_uid",
            "class_uid",
            "activity_id",
            "type_uid",
            "severity_id",
            "time",
            "metadata.product.name",
            "metadata.product.vendor_name",
            "metadata.version",
            "src_endpoint.ip",
            "dst_endpoint.ip",
            "connection_info.direction_id",
            "device.type_id",
            "observables.0",
        ] {
            let value = if let Some(prefix) = field.strip_suffix(".0") {
                get(&o, prefix).and_then(|v| v.get(0))
            } else {
                get(&o, field)
            };
            assert!(value.is_some(), "{case}: OCSF lacks {field}");
        }
        assert_eq!(o["category_uid"], 4, "{case}");
        assert_eq!(o["class_uid"], 4001, "{case}");
        let activity = o["activity_id"].as_u64().unwrap();
        assert!([1, 4, 5].contains(&activity), "{case}: activity {activity}");
        assert_eq!(o["type_uid"].as_u64(), Some(400100 + activity), "{case}");
        assert!(
            (0..=6).contains(&o["severity_id"].as_u64().unwrap()),
            "{case}"
        );
        assert!(
            o["time"].as_u64().unwrap() > 1_600_000_000_000,
            "{case}: time in ms"
        );
        assert!(
            o["metadata"]["version"].as_str().unwrap().starts_with("1."),
            "{case}"
        );
        assert_eq!(o["observables"][0]["type_id"], 2, "{case}");
        assert!(o["is_alert"].is_boolean(), "{case}");
    }
}

/// A program start is OCSF Process Activity (1007), Launch; a listener is
/// Network Activity, Listen (7), its address the destination. Neither has
/// a source endpoint.
#[test]
fn ocsf_local_signals_have_their_class_and_activity() {
    let required = ["severity_id", "time", "metadata.version", "device.type_id"];
    for case in cases_of(&["exec"]) {
        let o = render(case).ocsf;
        assert_no_nulls(&o, case);
        for field in required
            .iter()
            .chain(&["process.pid", "process.name", "actor"])
        {
            assert!(get(&o, field).is_some(), "{case}: OCSF lacks {field}");
        }
        assert_eq!(
            (&o["category_uid"], &o["class_uid"], &o["activity_id"]),
            (&1.into(), &1007.into(), &1.into()),
            "{case}"
        );
        assert_eq!(o["type_uid"], 100701, "{case}");
        assert_eq!(o["type_name"], "Process Activity: Launch", "{case}");
        assert_eq!(o["observables"][0]["type_id"], 9, "{case}");
        assert_eq!(o["attacks"][0]["sub_technique"]["uid"], "T1090.003");
        for absent in ["src_endpoint", "dst_endpoint", "connection_info"] {
            assert!(o.get(absent).is_none(), "{case}: {absent}");
        }
    }
    for case in cases_of(&["listen"]) {
        let o = render(case).ocsf;
        assert_no_nulls(&o, case);
        for field in
            required
                .iter()
                .chain(&["dst_endpoint.ip", "dst_endpoint.port", "actor.process.pid"])
        {
            assert!(get(&o, field).is_some(), "{case}: OCSF lacks {field}");
        }
        assert_eq!(
            (&o["class_uid"], &o["activity_id"]),
            (&4001.into(), &7.into())
        );
        assert_eq!(o["type_uid"], 400107, "{case}");
        assert_eq!(o["connection_info"]["direction_id"], 0, "{case}");
        assert_eq!(o["observables"][0]["type_id"], 11, "{case}");
        assert!(o.get("src_endpoint").is_none(), "{case}");
    }
}

/// A DNS query is OCSF DNS Activity (4003), Query (1): the name in
/// `query.hostname`, the server the destination, the sender the actor.
#[test]
fn ocsf_dns_queries_are_dns_activity() {
    let mut seen = 0;
    for case in cases_of(&["dns"]) {
        seen += 1;
        let o = render(case).ocsf;
        assert_no_nulls(&o, case);
        for field in [
            "severity_id",
            "time",
            "metadata.version",
            "query.hostname",
            "query.type",
            "dst_endpoint.ip",
            "dst_endpoint.port",
            "actor.process.pid",
            "connection_info.protocol_name",
        ] {
            assert!(get(&o, field).is_some(), "{case}: OCSF lacks {field}");
        }
        assert_eq!(
            (&o["category_uid"], &o["class_uid"], &o["activity_id"]),
            (&4.into(), &4003.into(), &1.into()),
            "{case}"
        );
        assert_eq!(o["type_uid"], 400301, "{case}");
        assert_eq!(o["type_name"], "DNS Activity: Query", "{case}");
        assert_eq!(o["observables"][0]["type_id"], 1, "{case}");
        assert_eq!(o["observables"][0]["name"], "query.hostname", "{case}");
        assert_eq!(o["connection_info"]["direction_id"], 2, "{case}");
        assert!(o.get("src_endpoint").is_none(), "{case}");
        let f = render(case).falco;
        assert_eq!(f["output_fields"]["evt.type"], "sendto", "{case}");
        assert_eq!(
            f["output_fields"]["dns.question.name"], o["query"]["hostname"],
            "{case}"
        );
    }
    assert_eq!(seen, 2);
    let via = render("dns_bridges_via_resolver").falco;
    assert_eq!(via["output_fields"]["torsensor.dns.resolver"], "dnsmasq");
    assert!(
        via["output"]
            .as_str()
            .unwrap()
            .contains("via_resolver=dnsmasq"),
        "{via:#}"
    );
}

#[test]
fn falco_output_is_what_falcosidekick_accepts() {
    for case in CASES {
        let f = render(case).falco;
        assert_no_nulls(&f, case);
        let priority = f["priority"].as_str().expect("priority");
        assert!(
            Priority::parse(priority).is_some_and(|p| p.as_str() == priority),
            "{case}: priority {priority}"
        );
        assert!(!f["rule"].as_str().unwrap().is_empty(), "{case}: rule");
        let time = f["time"].as_str().expect("time");
        humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("{case}: time {time}: {e}"));
        assert_eq!(
            time.split('.').nth(1).map(|ns| ns.len()),
            Some(10),
            "{case}: ns + Z"
        );
        let fields = f["output_fields"].as_object().unwrap();
        assert!(!fields.is_empty(), "{case}: output_fields");
        let keys: &[&str] = match case.split('_').next() {
            Some("exec") => &["evt.time", "evt.type", "proc.pid", "proc.name"],
            // A web log names the client's address only.
            Some("hunt") if case.contains("web") => &["fd.rip", "fd.l4proto", "evt.time"],
            Some("listen") => &["fd.lip", "fd.lport", "fd.l4proto", "evt.time", "proc.pid"],
            // The server; the sending socket's own address is not read.
            Some("dns") => &["fd.rip", "fd.rport", "fd.l4proto", "evt.time", "proc.pid"],
            _ => &["fd.rip", "fd.rport", "fd.lport", "fd.l4proto", "evt.time"],
        };
        for key in keys {
            assert!(fields.contains_key(*key), "{case}: {key}");
        }
        assert_eq!(f["source"], "torsensor");
        assert!(!f["output"].as_str().unwrap().is_empty());
    }
}

#[test]
fn absent_fields_are_left_out() {
    // No process attributed: no actor in OCSF, no proc.* / user.* in Falco.
    let r = render("egress_audit_failed_no_process");
    assert!(r.ocsf.get("actor").is_none());
    let fields = r.falco["output_fields"].as_object().unwrap();
    assert!(
        fields.keys().all(|k| !k.starts_with("proc.")
            && !k.starts_with("user.")
            && !k.starts_with("container.")),
        "{fields:?}"
    );
    // An audit event is no alert: no disposition, no reputation, no attack.
    assert_eq!(r.ocsf["is_alert"], false);
    assert!(r.ocsf.get("disposition_id").is_none());
    assert!(r.ocsf.get("attacks").is_none());
    assert!(r.ocsf["observables"][0].get("reputation").is_none());
    assert_eq!(r.ocsf["activity_id"], 4, "a failed connect is Fail");
    assert_eq!(r.falco["priority"], "Informational");

    // On the host: no container or Kubernetes fields anywhere.
    let r = render("egress_ipv4_host");
    assert!(r.enriched.get("container").is_none());
    assert!(r.enriched.get("orchestrator").is_none());
    assert!(r.ocsf["actor"]["process"].get("container").is_none());
    let fields = r.falco["output_fields"].as_object().unwrap();
    assert!(
        fields
            .keys()
            .all(|k| !k.starts_with("container.") && !k.starts_with("k8s."))
    );
    // Pod name and namespace are unknown without the Kubernetes API.
    let r = render("ingress_ipv6_container");
    let fields = r.falco["output_fields"].as_object().unwrap();
    assert!(!fields.contains_key("k8s.pod.name") && !fields.contains_key("k8s.ns.name"));
    assert!(fields.contains_key("k8s.pod.uid"));
}

#[test]
fn directions_map_to_the_peer() {
    let out = render("egress_ipv4_host");
    assert_eq!(out.ocsf["connection_info"]["direction_id"], 2);
    assert_eq!(out.falco["output_fields"]["fd.rip"], "198.51.100.7");
    assert_eq!(out.falco["output_fields"]["fd.rport"], 9001);
    assert_eq!(out.falco["output_fields"]["evt.type"], "connect");
    let inn = render("ingress_ipv6_container");
    assert_eq!(inn.ocsf["connection_info"]["direction_id"], 1);
    assert_eq!(inn.ocsf["connection_info"]["protocol_ver_id"], 6);
    assert_eq!(inn.falco["output_fields"]["fd.rip"], "2001:db8:7::99");
    assert_eq!(inn.falco["output_fields"]["fd.lport"], 443);
    assert_eq!(inn.falco["output_fields"]["evt.type"], "accept");
    // Both directions carry the same flow hash in ECS and OCSF.
    assert_eq!(
        inn.enriched["network"]["community_id"],
        inn.ocsf["connection_info"]["community_uid"]
    );
}

/// The collector's alerts (real ones: softflowd's IPFIX export of the
/// traffic `tests/collector.rs` records, received by a running sensor).
#[test]
fn collector_alerts_render_in_every_schema() {
    let out = render("collector_outbound_ipfix");
    assert_no_nulls(&out.ocsf, "collector");
    assert_eq!(out.enriched["torsensor"]["signal"], "flow");
    assert_eq!(out.enriched["network"]["direction"], "outbound");
    assert_eq!(out.enriched["observer"]["ip"][0], "127.0.0.1");
    assert!(out.enriched["network"]["community_id"].is_string());
    assert_eq!(out.ocsf["class_uid"], 4001);
    assert_eq!(out.ocsf["activity_name"], "Traffic");
    assert_eq!(
        out.ocsf["traffic"]["bytes_out"],
        out.enriched["source"]["bytes"]
    );
    assert_eq!(out.ocsf["dst_endpoint"]["port"], 9001);
    assert!(
        out.ocsf.get("actor").is_none(),
        "no process in a flow record"
    );
    assert_eq!(out.falco["output_fields"]["evt.type"], "flow");
    assert_eq!(
        out.falco["rule"],
        "Exported flow from a host to the Tor network"
    );
    let inbound = render("collector_inbound_ipfix");
    assert_eq!(inbound.enriched["rule"]["id"], "TORSENSOR-012");
    assert_eq!(inbound.ocsf["connection_info"]["direction"], "Inbound");
    assert_eq!(inbound.ocsf["src_endpoint"]["ip"], "198.51.100.27");
}

#[test]
fn gateway_alerts_render_in_every_schema() {
    let hit = render("gateway_outbound_hit");
    assert_no_nulls(&hit.ocsf, "gateway hit");
    assert_eq!(
        (&hit.ocsf["class_uid"], &hit.ocsf["activity_id"]),
        (&4001.into(), &1.into())
    );
    assert_eq!(hit.ocsf["connection_info"]["direction_id"], 2);
    // The inside host is the source of an outbound flow; the interface
    // faces it.
    assert_eq!(hit.ocsf["src_endpoint"]["interface_name"], "eth1");
    assert!(hit.ocsf.get("traffic").is_none(), "a hit has no counts");
    assert!(hit.ocsf.get("actor").is_none(), "no process on a gateway");
    assert_eq!(hit.falco["output_fields"]["evt.type"], "gateway");
    assert_eq!(hit.falco["output_fields"]["fd.rip"], "198.51.100.7");
    assert!(hit.falco["output_fields"].get("proc.pid").is_none());
    assert_eq!(hit.enriched["network"]["direction"], "outbound");
    assert_eq!(
        hit.enriched["observer"]["ingress"]["interface"]["name"],
        "eth1"
    );

    let end = render("gateway_inbound_flow_end");
    assert_no_nulls(&end.ocsf, "gateway end");
    assert_eq!(end.ocsf["activity_id"], 2, "Close");
    assert_eq!(end.ocsf["type_uid"], 400102);
    assert_eq!(end.ocsf["connection_info"]["direction_id"], 1);
    assert_eq!(end.ocsf["dst_endpoint"]["interface_name"], "eth1");
    let t = &end.ocsf["traffic"];
    assert_eq!(t["bytes_out"], 1460380, "source to destination");
    assert_eq!(t["bytes_in"], 5210456);
    assert_eq!(t["bytes"], 1460380 + 5210456);
    assert_eq!(t["packets"], 1021 + 3610);
    assert_eq!(end.ocsf["duration"], 130376);
    let output = end.falco["output"].as_str().unwrap();
    assert!(output.contains("end=fin"), "{output}");
    assert!(
        output.contains("bytes_out=1460380 bytes_in=5210456"),
        "{output}"
    );
    assert_eq!(end.falco["output_fields"]["fd.rip"], "2001:db8:2::9");
    assert_eq!(end.enriched["source"]["bytes"], 1460380);
    assert_eq!(end.enriched["event"]["duration"], 130376543211u64);
}
