#![allow(clippy::unwrap_used)]

use super::*;

const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels:
    team: a
---
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: x
  labels: {pod: a}
spec:
  nodeName: n2
  containers:
  - name: c
    image: ignored
    ports:
    - {name: serve-80-tcp, containerPort: 80}
    - {containerPort: 81, protocol: UDP}
    - {containerPort: 80, protocol: SCTP}
---
# an empty document is skipped
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny
  namespace: x
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 80
"#;

fn error_of(text: &str) -> String {
    parse_documents(text).unwrap_err().to_string()
}

#[test]
fn a_multi_document_file_parses_with_the_api_servers_defaults() {
    let objects = parse_documents(GOOD).unwrap();
    let refs: Vec<String> = objects.iter().map(|o| o.reference().to_string()).collect();
    assert_eq!(refs, ["Namespace x", "Pod x/a", "NetworkPolicy x/deny"]);
    let ns = objects[0].to_json();
    assert_eq!(ns["apiVersion"], "v1");
    assert_eq!(ns["kind"], "Namespace");
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
    assert_eq!(ns["metadata"]["labels"]["team"], "a");
    let pod = objects[1].to_json();
    assert_eq!(pod["spec"]["nodeName"], "n2");
    assert_eq!(pod["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
    let LabObject::Pod(p) = &objects[1] else {
        panic!("not a pod")
    };
    let ports: Vec<(String, u16)> = served_ports(p)
        .into_iter()
        .map(|s| (s.protocol, s.port))
        .collect();
    assert_eq!(
        ports,
        [("TCP".into(), 80), ("UDP".into(), 81), ("SCTP".into(), 80)]
    );
    let policy = objects[2].to_json();
    assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
}

#[test]
fn the_namespace_defaults_to_default_and_status_is_dropped() {
    let objects = parse_documents(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n",
    )
    .unwrap();
    assert_eq!(objects[0].reference().to_string(), "Pod default/p");
    assert!(objects[0].to_json().get("status").is_none());
}

#[test]
fn a_list_is_its_items() {
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"y"}},
        {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"z"}}]}"#;
    let objects = parse_documents(text).unwrap();
    assert_eq!(objects.len(), 2);
    let bad = text.replace("\"z\"", "\"Z\"");
    let err = error_of(&bad);
    assert!(
        err.starts_with("document 1.2 (Namespace Z): metadata.name"),
        "{err}"
    );
}

#[test]
fn errors_name_the_document_object_and_field() {
    let cases = [
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
            "document 1 (Service): kind",
        ),
        (
            "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: s}\n",
            "document 1 (Pod): apiVersion",
        ),
        ("kind: Pod\nmetadata: {name: s}\n", "document 1 (Pod): apiVersion"),
        ("apiVersion: v1\nmetadata: {name: s}\n", "document 1 (?): kind"),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n",
            "document 1 (Namespace Bad_Name): metadata.name",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: \"a.b\"}\nspec: {containers: [{name: c}]}\n",
            "document 1 (Pod a.b/p): metadata.namespace",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {\"a b\": c}}\nspec: {containers: [{name: c}]}\n",
            "document 1 (Pod default/p): metadata.labels[\"a b\"]",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 0}]}]}\n",
            "document 1 (Pod default/p): spec.containers[0].ports[0].containerPort",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protocol: ICMP}]}]}\n",
            "document 1 (Pod default/p): spec.containers[0].ports[0].protocol",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 80}]}]}\n",
            "document 1 (Pod default/p): spec.containers[0].ports[1].containerPort",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
            "document 1 (Pod default/p): spec.containers",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{name: this-name-is-far-too-long, containerPort: 80}]}]}\n",
            "document 1 (Pod default/p): spec.containers[0].ports[0].name",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{ports: []}]}\n",
            "document 1 (Pod default/p): spec.containers[0].name",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: eighty}]}]}\n",
            "document 1 (Pod default/p): (schema)",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: nonsense}}]}]}\n",
            "document 1 (NetworkPolicy default/n): spec",
        ),
    ];
    for (text, want) in cases {
        let err = error_of(text);
        assert!(err.starts_with(want), "{text}\n→ {err}\nwanted {want}");
    }
    // The index counts documents; an error in a later one names it.
    let two = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: X}\n";
    assert!(error_of(two).starts_with("document 2 (Namespace X)"));
    let yaml = error_of("apiVersion: v1\nkind: [unclosed\n");
    assert!(yaml.starts_with("document 1: not valid YAML"), "{yaml}");
}

#[test]
fn the_same_object_twice_is_refused() {
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
    let err = error_of(&format!("{ns}---\n{ns}"));
    assert!(
        err.contains("Namespace x") && err.contains("twice"),
        "{err}"
    );
}

#[test]
fn the_implicit_namespace_carries_its_name_label() {
    let ns = namespace_object("y");
    let value = serde_json::to_value(&ns).unwrap();
    assert_eq!(value["kind"], "Namespace");
    assert_eq!(
        value["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "y"
    );
}
