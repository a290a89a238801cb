//! Printing: tables (`-o wide` adds columns), JSON and YAML.

use serde_json::Value;

/// The elements of the array under `key`.
pub fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v[key].as_array().into_iter().flatten()
}

/// A value as plain text (a string without quotes, null as nothing).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A value as text, null as `-`.
pub fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        other => text(other),
    }
}

/// The first 12 characters (of a digest).
pub fn short(v: &Value) -> String {
    text(v).chars().take(12).collect()
}

/// Indented JSON.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Labels as `k=v,k=v`, none as `-`.
pub fn labels(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

fn stage(s: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(sel) = s["selector"].as_object() {
        for (k, v) in sel {
            parts.push(format!("{k}={}", text(v)));
        }
    }
    if let Some(p) = s["percent"].as_f64() {
        parts.push(format!("{p}%"));
    }
    if let Some(list) = s["instances"].as_array() {
        parts.push(format!(
            "[{}]",
            list.iter().map(text).collect::<Vec<_>>().join(",")
        ));
    }
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join("&")
    }
}

/// A rollout's stages as `10% -> all`.
pub fn stages(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(stage).collect::<Vec<_>>().join(" -> "))
        .unwrap_or_default()
}

/// A rollout's released stage as `1/2`, or `all`.
pub fn stage_of(r: &Value) -> String {
    let total = r["stages"].as_array().map_or(0, Vec::len);
    let current = r["current_stage"].as_u64().unwrap_or(0) + 1;
    if r["state"] == "completed" || current as usize > total {
        "all".into()
    } else {
        format!("{current}/{total}")
    }
}

/// A rollout in one line.
pub fn describe(r: &Value) -> String {
    format!(
        "rollout {}: version {} (previous {}), {}, stage {}, target {}",
        r["id"],
        r["version"],
        opt(&r["previous_version"]),
        text(&r["state"]),
        stage_of(r),
        stages(&r["stages"])
    )
}

/// Prints rows under headers, in aligned columns.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// A value as YAML.
pub fn yaml(v: &Value) -> anyhow::Result<String> {
    Ok(serde_yaml_ng::to_string(v)?)
}
