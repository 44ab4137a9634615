//! The patch formats the API server accepts: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902) and the subset of strategic merge patch that meshd's objects need.

use serde_json::{Map, Value};

/// Applies an RFC 7386 JSON merge patch: objects merge recursively, `null` deletes a key,
/// anything else (including arrays) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Lists that strategic merge patch merges by a key instead of replacing, as declared by the
/// Kubernetes API types (`patchStrategy:"merge"`), for the objects this server holds.
const MERGE_KEYS: &[(&[&str], &str)] = &[
    (&["status", "addresses"], "type"),
    (&["status", "conditions"], "type"),
];

/// Applies a strategic merge patch. Maps merge as in [`merge_patch`]; the lists in
/// [`MERGE_KEYS`] merge element-wise by their key (an element `{"$patch":"delete", key: …}`
/// removes one); other lists are replaced. Other `$`-directives (`$setElementOrder`,
/// `$retainKeys`, `$deleteFromPrimitiveList`) are not implemented and rejected.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    smp(target, patch, &mut Vec::new())
}

fn smp(target: &mut Value, patch: &Value, path: &mut Vec<String>) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if let Some(key) = patch.keys().find(|k| k.starts_with('$')) {
        return Err(format!(
            "strategic merge patch directive {key:?} is not supported by this test API server"
        ));
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return Ok(());
    };
    for (key, value) in patch {
        path.push(key.clone());
        let merge_key = MERGE_KEYS
            .iter()
            .find(|(p, _)| p.iter().eq(path.iter()))
            .map(|(_, k)| *k);
        match (value, merge_key) {
            (Value::Null, _) => {
                target.remove(key);
            }
            (Value::Array(items), Some(merge_key)) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !slot.is_array() {
                    *slot = Value::Array(Vec::new());
                }
                if let Value::Array(existing) = slot {
                    merge_keyed_list(existing, items, merge_key)?;
                }
            }
            (value, _) => smp(
                target.entry(key.clone()).or_insert(Value::Null),
                value,
                path,
            )?,
        }
        path.pop();
    }
    Ok(())
}

fn merge_keyed_list(existing: &mut Vec<Value>, items: &[Value], key: &str) -> Result<(), String> {
    for item in items {
        let id = item
            .get(key)
            .cloned()
            .ok_or_else(|| format!("list element lacks its merge key {key:?}: {item}"))?;
        let position = existing.iter().position(|e| e.get(key) == Some(&id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => merge_patch(&mut existing[i], item),
            (None, false) => existing.push(item.clone()),
        }
    }
    Ok(())
}

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`).
/// Errors describe the failing operation; the target is left unchanged on error.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Array(ops) = patch else {
        return Err("a JSON patch must be an array of operations".into());
    };
    let mut doc = target.clone();
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("operation without \"op\": {op}"))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("operation without \"path\": {op}"))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("{kind} operation without \"value\": {op}"))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{kind} operation without \"from\": {op}"))
        };
        match kind {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| format!("copy: no value at {:?}", from().unwrap_or("")))?;
                add(&mut doc, path, v)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    *target = doc;
    Ok(())
}

/// Splits a JSON pointer into its parent pointer and unescaped last token.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    if path.is_empty() {
        return Err("the whole document cannot be the target".into());
    }
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("{path:?} is not a JSON pointer"))?;
    let token = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..idx], token))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (parent, token) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if token == "-" {
                items.len()
            } else {
                token
                    .parse::<usize>()
                    .ok()
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| format!("add: bad array index in {path:?}"))?
            };
            items.insert(index, value);
            Ok(())
        }
        _ => Err(format!("add: missing parent of {path:?}")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, token) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map
            .remove(&token)
            .ok_or_else(|| format!("remove: no value at {path:?}")),
        Some(Value::Array(items)) => {
            let index = token
                .parse::<usize>()
                .ok()
                .filter(|i| *i < items.len())
                .ok_or_else(|| format!("remove: bad array index in {path:?}"))?;
            Ok(items.remove(index))
        }
        _ => Err(format!("remove: no value at {path:?}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn rfc7386_examples() {
        let mut doc = json!({"a":"b","c":{"d":"e","f":"g"}});
        merge_patch(&mut doc, &json!({"a":"z","c":{"f":null}}));
        assert_eq!(doc, json!({"a":"z","c":{"d":"e"}}));
        let mut doc = json!({"a":[1,2]});
        merge_patch(&mut doc, &json!({"a":[3]}));
        assert_eq!(doc, json!({"a":[3]}));
    }

    #[test]
    fn strategic_merges_addresses_by_type() {
        let mut doc = json!({"status":{"addresses":[{"type":"InternalIP","address":"a"},{"type":"Hostname","address":"h"}]}});
        strategic_merge_patch(
            &mut doc,
            &json!({"status":{"addresses":[{"type":"InternalIP","address":"b"},{"type":"Hostname","$patch":"delete"}]}}),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"status":{"addresses":[{"type":"InternalIP","address":"b"}]}})
        );
        assert!(strategic_merge_patch(&mut doc, &json!({"$retainKeys":["a"]})).is_err());
    }

    #[test]
    fn json_patch_ops() {
        let mut doc = json!({"metadata":{"annotations":{"a/b":"1"}},"l":[1,2]});
        json_patch(
            &mut doc,
            &json!([
                {"op":"test","path":"/metadata/annotations/a~1b","value":"1"},
                {"op":"replace","path":"/metadata/annotations/a~1b","value":"2"},
                {"op":"add","path":"/l/-","value":3},
                {"op":"remove","path":"/l/0"}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata":{"annotations":{"a/b":"2"}},"l":[2,3]})
        );
        let before = doc.clone();
        assert!(json_patch(
            &mut doc,
            &json!([{"op":"remove","path":"/l/0"},{"op":"test","path":"/x","value":1}])
        )
        .is_err());
        assert_eq!(doc, before, "a failed patch changes nothing");
    }
}
