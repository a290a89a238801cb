//! Which gateways a rollout stage reaches: a label selector, a stable-hash percentage of
//! instance ids, an explicit instance list, or several of these at once (all must hold).
//! Stages are cumulative: at stage k a rollout reaches every instance any of stages 0..=k
//! reaches.
//!
//! A percentage hashes the gateway's stable key: the value of its `stable_key` label when it
//! reports one, else its instance id. Under a Deployment the instance id (the pod name)
//! changes on every restart; a label that survives restarts (e.g. the node name) keeps a
//! restarted pod in the bucket it had.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One stage of a rollout. Every condition given must hold; a stage with none reaches every
/// gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Labels the gateway must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// The share of gateways, by a stable hash of the instance id: 0 < P <= 100, at most two
    /// decimals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Instance ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<String>>,
}

/// A rollout's target as the API takes it: one stage written inline, or a list of stages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Labels (single-stage form).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Percentage of instances (single-stage form).
    #[serde(default)]
    pub percent: Option<f64>,
    /// Instance ids (single-stage form).
    #[serde(default)]
    pub instances: Option<Vec<String>>,
    /// Stages, promoted one after the other.
    #[serde(default)]
    pub stages: Option<Vec<Stage>>,
}

/// The label whose value percentage targeting hashes instead of the instance id.
pub const STABLE_KEY_LABEL: &str = "stable_key";

/// What percentage targeting hashes for a gateway: its `stable_key` label, else its id.
pub fn stable_key<'a>(instance_id: &'a str, labels: &'a BTreeMap<String, String>) -> &'a str {
    labels
        .get(STABLE_KEY_LABEL)
        .map_or(instance_id, String::as_str)
}

/// The hash bucket (0..10000) of an instance: the first 8 bytes of SHA-256(instance id) as a
/// big-endian integer, modulo 10000.
pub fn bucket(instance_id: &str) -> u64 {
    let digest = Sha256::digest(instance_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % 10_000
}

/// Whether an instance falls in a `percent`% canary.
pub fn in_percent(instance_id: &str, percent: f64) -> bool {
    bucket(instance_id) < (percent * 100.0).round() as u64
}

impl Stage {
    /// Whether this stage reaches the instance.
    pub fn matches(&self, instance_id: &str, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
            && self
                .percent
                .is_none_or(|p| in_percent(stable_key(instance_id, labels), p))
            && self
                .instances
                .as_ref()
                .is_none_or(|list| list.iter().any(|i| i == instance_id))
    }

    /// Whether the stage has no condition, i.e. reaches every gateway.
    pub fn is_everyone(&self) -> bool {
        self.selector.is_empty() && self.percent.is_none() && self.instances.is_none()
    }

    fn validate(&self, key: &str) -> Result<(), String> {
        for (k, v) in &self.selector {
            if k.is_empty() {
                return Err(format!("{key}.selector: label names must not be empty"));
            }
            if v.is_empty() {
                return Err(format!("{key}.selector.{k}: the value must not be empty"));
            }
        }
        if let Some(p) = self.percent {
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!(
                    "{key}.percent: {p} is out of range: give more than 0 and at most 100"
                ));
            }
            if ((p * 100.0).round() - p * 100.0).abs() > 1e-6 {
                return Err(format!(
                    "{key}.percent: {p} has more than two decimals (the hash has 10000 buckets)"
                ));
            }
        }
        if let Some(list) = &self.instances {
            if list.is_empty() {
                return Err(format!(
                    "{key}.instances: list at least one instance id, or leave it out"
                ));
            }
            if let Some(i) = list.iter().position(|s| s.is_empty()) {
                return Err(format!("{key}.instances[{i}]: must not be empty"));
            }
        }
        Ok(())
    }
}

impl Target {
    /// The stages this target describes, checked; the inline form is one stage and an absent
    /// target is one stage that reaches every gateway. Errors name the key at fault.
    pub fn into_stages(self) -> Result<Vec<Stage>, String> {
        let inline = Stage {
            selector: self.selector,
            percent: self.percent,
            instances: self.instances,
        };
        let stages = match self.stages {
            Some(stages) => {
                if !inline.is_everyone() {
                    return Err(
                        "target: give either stages or selector/percent/instances, not both".into(),
                    );
                }
                if stages.is_empty() {
                    return Err("target.stages: list at least one stage".into());
                }
                stages
            }
            None => vec![inline],
        };
        for (i, s) in stages.iter().enumerate() {
            s.validate(&format!("target.stages[{i}]"))?;
        }
        Ok(stages)
    }
}

/// Whether stages 0..=current reach the instance.
pub fn reached(
    stages: &[Stage],
    current: usize,
    instance_id: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    stages
        .iter()
        .take(current.saturating_add(1))
        .any(|s| s.matches(instance_id, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bucket_follows_the_contract() {
        // Computed with Python: int.from_bytes(hashlib.sha256(b"gw-1").digest()[:8], "big") % 10000
        assert_eq!(bucket("gw-1"), 457);
        assert_eq!(bucket("gateway-a"), 8495);
        assert!(in_percent("gw-1", 4.58));
        assert!(!in_percent("gw-1", 4.57));
    }

    #[test]
    fn percent_splits_instances_by_hash() {
        let ids: Vec<String> = (0..2000).map(|i| format!("gateway-{i}")).collect();
        let in34 = ids.iter().filter(|i| in_percent(i, 34.0)).count();
        // A uniform hash puts about 680 of 2000 in a 34% canary.
        assert!((600..760).contains(&in34), "{in34}");
        assert!(ids.iter().all(|i| in_percent(i, 100.0)));
        // Growing the percentage only adds instances.
        assert!(
            ids.iter()
                .filter(|i| in_percent(i, 34.0))
                .all(|i| in_percent(i, 50.0))
        );
        let b = bucket("gateway-7");
        assert!(in_percent("gateway-7", (b + 1) as f64 / 100.0));
        assert!(!in_percent("gateway-7", b as f64 / 100.0));
    }

    #[test]
    fn percent_follows_the_stable_key_across_instance_ids() {
        // Two pod names of one restarted gateway fall on either side of a 5% canary...
        let (old, new) = ("gw-1", "gateway-a");
        assert!(in_percent(old, 5.0) && !in_percent(new, 5.0));
        // ...but with the same stable_key label both get that key's bucket.
        let s = Stage {
            percent: Some(5.0),
            ..Stage::default()
        };
        let keyed = labels(&[(STABLE_KEY_LABEL, "node-7")]);
        assert_eq!(s.matches(old, &keyed), s.matches(new, &keyed));
        assert_eq!(s.matches(old, &keyed), in_percent("node-7", 5.0));
        assert!(s.matches(old, &labels(&[])) && !s.matches(new, &labels(&[])));
    }

    #[test]
    fn all_conditions_of_a_stage_must_hold() {
        let s = Stage {
            selector: labels(&[("region", "eu")]),
            percent: None,
            instances: Some(vec!["a".into(), "b".into()]),
        };
        assert!(s.matches("a", &labels(&[("region", "eu"), ("x", "y")])));
        assert!(!s.matches("a", &labels(&[("region", "us")])));
        assert!(!s.matches("a", &labels(&[])));
        assert!(!s.matches("c", &labels(&[("region", "eu")])));
        assert!(Stage::default().matches("z", &labels(&[])));
    }

    #[test]
    fn stages_are_cumulative() {
        let stages = vec![
            Stage {
                instances: Some(vec!["a".into()]),
                ..Stage::default()
            },
            Stage {
                selector: labels(&[("tier", "2")]),
                ..Stage::default()
            },
            Stage::default(),
        ];
        let none = labels(&[]);
        assert!(reached(&stages, 0, "a", &none));
        assert!(!reached(&stages, 0, "b", &labels(&[("tier", "2")])));
        assert!(reached(&stages, 1, "a", &none));
        assert!(reached(&stages, 1, "b", &labels(&[("tier", "2")])));
        assert!(!reached(&stages, 1, "c", &none));
        assert!(reached(&stages, 2, "c", &none));
    }

    #[test]
    fn targets_are_checked() {
        let t: Target = serde_json::from_str(r#"{"percent": 34}"#).unwrap();
        assert_eq!(t.into_stages().unwrap()[0].percent, Some(34.0));
        assert_eq!(
            Target::default().into_stages().unwrap(),
            vec![Stage::default()]
        );
        let bad = [
            (r#"{"percent": 0}"#, "target.stages[0].percent"),
            (r#"{"percent": 100.5}"#, "target.stages[0].percent"),
            (r#"{"percent": 1.234}"#, "two decimals"),
            (r#"{"instances": []}"#, "target.stages[0].instances"),
            (r#"{"stages": []}"#, "target.stages"),
            (r#"{"stages": [{"percent": 5}], "percent": 5}"#, "not both"),
            (
                r#"{"stages": [{}, {"selector": {"a": ""}}]}"#,
                "target.stages[1].selector.a",
            ),
        ];
        for (json, want) in bad {
            let t: Target = serde_json::from_str(json).unwrap();
            let e = t.into_stages().unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
        assert!(serde_json::from_str::<Target>(r#"{"percentage": 3}"#).is_err());
    }
}
