//! The node-identity policy's CEL, read from `deploy/components/node-identity/policy.yaml`
//! (never a copy) and evaluated with `cel-interpreter` the way the API server does: the match
//! conditions, then the variables (as `variables.NAME`), then every validation; an expression
//! that fails to evaluate refuses (`failurePolicy: Fail`).

use cel_interpreter::{Context, Program, Value as CelValue};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub struct Policy {
    match_conditions: Vec<(String, Program)>,
    variables: Vec<(String, Program)>,
    validations: Vec<(String, Program)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The policy does not apply (another user).
    NotMatched,
    Allowed,
    /// Refused, with the failing validation's message.
    Denied(String),
}

fn compile(expr: &str) -> Program {
    Program::compile(expr).unwrap_or_else(|e| panic!("CEL does not parse: {expr}\n{e:?}"))
}

/// The Node's policy.
pub fn load() -> Policy {
    load_named("meshd-node-identity")
}

/// The policy named `name` in `policy.yaml`.
pub fn load_named(name: &str) -> Policy {
    let path = super::deploy_dir().join("components/node-identity/policy.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let policy = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .find(|v| v["kind"] == "ValidatingAdmissionPolicy" && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("ValidatingAdmissionPolicy {name} in policy.yaml"));
    let spec = &policy["spec"];
    let named = |list: &Value| -> Vec<(String, Program)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_string(),
                    compile(v["expression"].as_str().unwrap()),
                )
            })
            .collect()
    };
    Policy {
        match_conditions: named(&spec["matchConditions"]),
        variables: named(&spec["variables"]),
        validations: spec["validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["message"].as_str().unwrap().to_string(),
                    compile(v["expression"].as_str().unwrap()),
                )
            })
            .collect(),
    }
}

impl Policy {
    pub fn evaluate(&self, request: &Value, object: &Value, old: &Value) -> Verdict {
        let mut ctx = Context::default();
        ctx.add_variable("request", request.clone()).unwrap();
        ctx.add_variable("object", object.clone()).unwrap();
        ctx.add_variable("oldObject", old.clone()).unwrap();
        for (name, program) in &self.match_conditions {
            match program.execute(&ctx) {
                Ok(CelValue::Bool(true)) => {}
                Ok(CelValue::Bool(false)) => return Verdict::NotMatched,
                other => return Verdict::Denied(format!("match condition {name}: {other:?}")),
            }
        }
        let mut variables: HashMap<cel_interpreter::objects::Key, CelValue> = HashMap::new();
        for (name, program) in &self.variables {
            let mut scope = Context::default();
            scope.add_variable("request", request.clone()).unwrap();
            scope.add_variable("object", object.clone()).unwrap();
            scope.add_variable("oldObject", old.clone()).unwrap();
            scope.add_variable_from_value(
                "variables",
                CelValue::Map(cel_interpreter::objects::Map {
                    map: Arc::new(variables.clone()),
                }),
            );
            let value = program
                .execute(&scope)
                .unwrap_or_else(|e| CelValue::String(Arc::new(format!("error: {e:?}"))));
            variables.insert(name.clone().into(), value);
        }
        ctx.add_variable_from_value(
            "variables",
            CelValue::Map(cel_interpreter::objects::Map {
                map: Arc::new(variables),
            }),
        );
        for (message, program) in &self.validations {
            match program.execute(&ctx) {
                Ok(CelValue::Bool(true)) => {}
                Ok(CelValue::Bool(false)) => return Verdict::Denied(message.clone()),
                other => return Verdict::Denied(format!("{message} (evaluation: {other:?})")),
            }
        }
        Verdict::Allowed
    }
}

pub const MESHD: &str = "system:serviceaccount:meshd-system:meshd";

/// A request by `user` (with `node-name` claims `claims`, or no extra at all) for `name`.
pub fn request(user: &str, claims: Option<&[&str]>, op: &str, name: &str, sub: &str) -> Value {
    let mut user_info = json!({"username": user, "groups": ["system:serviceaccounts"]});
    if let Some(claims) = claims {
        user_info["extra"] = json!({"authentication.kubernetes.io/node-name": claims});
    }
    json!({
        "operation": op,
        "name": name,
        "subResource": sub,
        "userInfo": user_info,
    })
}

/// A Node as the API server holds it: labels, annotations (meshd's and the kubelet's),
/// spec, addresses and conditions.
pub fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name},
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "meshd.io/public-key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE=",
                "meshd.io/listen-port": "51820",
                "meshd.io/second-key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAI=",
            },
        },
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "192.168.1.1"}],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
                {"type": "MeshdEncrypted", "status": "False", "reason": "NotConverged"},
            ],
        },
    })
}
