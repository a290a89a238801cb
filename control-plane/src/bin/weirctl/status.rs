//! `weirctl rollout status`: per released stage, how many of the gateways it targets have
//! ACKed the rollout's version, from `GET /rollouts/{id}` and `GET /gateways`. Stage matching
//! is the control plane's own (`targeting::Stage`), so both count the same gateways.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use weir_control_plane::targeting::Stage;

/// The parts of a rollout the status needs.
#[derive(Deserialize)]
pub struct RolloutView {
    id: i64,
    version: u64,
    stages: Vec<Stage>,
    current_stage: usize,
    state: String,
}

/// The parts of a gateway the status needs.
#[derive(Deserialize)]
pub struct GatewayView {
    instance_id: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    connected: bool,
    running_version: Option<u64>,
    last_report: Option<String>,
    last_report_version: Option<u64>,
    last_error: Option<String>,
    desired_version: Option<u64>,
}

/// One stage's progress.
#[derive(Debug, Serialize)]
pub struct StageStatus {
    /// What the stage targets, e.g. `10%` or `region=eu` or `all`.
    pub target: String,
    /// Whether the stage is released.
    pub released: bool,
    /// Connected gateways the stage targets that should run the version.
    pub targeted: Vec<String>,
    /// Those that ACKed it.
    pub acked: Vec<String>,
}

/// A gateway's refusal of the version.
#[derive(Debug, Serialize)]
pub struct Refusal {
    /// The gateway.
    pub instance_id: String,
    /// Why it refused.
    pub error: String,
}

/// A rollout's progress.
#[derive(Debug, Serialize)]
pub struct RolloutStatus {
    /// The rollout.
    pub id: i64,
    /// The version it releases.
    pub version: u64,
    /// `active`, `paused`, `completed` or `rolled_back`.
    pub state: String,
    /// Each stage, then (once completed without a stage reaching everyone) `all`.
    pub stages: Vec<StageStatus>,
    /// Targeted gateways that refused the version.
    pub nacked: Vec<Refusal>,
    /// Whether every gateway the released stages target has ACKed.
    pub done: bool,
}

impl RolloutStatus {
    /// The status of `rollout` given every gateway. A gateway counts when it is connected and
    /// should run this rollout's version now (a newer rollout may have taken it over).
    pub fn compute(
        rollout: &serde_json::Value,
        gateways: &serde_json::Value,
    ) -> anyhow::Result<Self> {
        let r: RolloutView = serde_json::from_value(rollout.clone())
            .context("the control plane's rollout is not in the expected shape")?;
        let gws: Vec<GatewayView> = serde_json::from_value(gateways["gateways"].clone())
            .context("the control plane's gateway list is not in the expected shape")?;
        let completed = r.state == "completed";
        let mut rows: Vec<(String, bool, Option<&Stage>)> = r
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (describe(s), completed || i <= r.current_stage, Some(s)))
            .collect();
        if completed && !r.stages.iter().any(Stage::is_everyone) {
            rows.push(("all".into(), true, None));
        }
        let concerned = |g: &&GatewayView| g.connected && g.desired_version == Some(r.version);
        let acked = |g: &GatewayView| {
            g.running_version == Some(r.version)
                && g.last_report.as_deref() == Some("ack")
                && g.last_report_version == Some(r.version)
        };
        let mut stages = Vec::new();
        let mut nacked = Vec::new();
        for (target, released, stage) in rows {
            let mut status = StageStatus {
                target,
                released,
                targeted: Vec::new(),
                acked: Vec::new(),
            };
            if released {
                for g in gws.iter().filter(concerned) {
                    if stage.is_some_and(|s| !s.matches(&g.instance_id, &g.labels)) {
                        continue;
                    }
                    status.targeted.push(g.instance_id.clone());
                    if acked(g) {
                        status.acked.push(g.instance_id.clone());
                    }
                }
            }
            stages.push(status);
        }
        // A refusal counts from any gateway a released stage reaches, whatever it should run
        // now: a NACK moves the rollout to paused, but the gateway keeps the older version.
        for g in &gws {
            let reached = stages.iter().any(|s| s.targeted.contains(&g.instance_id))
                || r.stages.iter().enumerate().any(|(i, s)| {
                    (completed || i <= r.current_stage) && s.matches(&g.instance_id, &g.labels)
                });
            if reached
                && g.last_report.as_deref() == Some("nack")
                && g.last_report_version == Some(r.version)
            {
                nacked.push(Refusal {
                    instance_id: g.instance_id.clone(),
                    error: g.last_error.clone().unwrap_or_default(),
                });
            }
        }
        let done = nacked.is_empty()
            && r.state != "rolled_back"
            && stages.iter().all(|s| s.acked.len() == s.targeted.len());
        Ok(Self {
            id: r.id,
            version: r.version,
            state: r.state,
            stages,
            nacked,
            done,
        })
    }

    /// The readable form: a bar per stage (acked/targeted).
    pub fn render(&self) -> String {
        let mut out = format!(
            "rollout {}: version {}, {}\n",
            self.id, self.version, self.state
        );
        let width = self
            .stages
            .iter()
            .map(|s| s.target.chars().count())
            .max()
            .unwrap_or(0);
        for (i, s) in self.stages.iter().enumerate() {
            let label = format!("{:<width$}", s.target);
            if s.released {
                out.push_str(&format!(
                    "  stage {} {label}  {} {}/{} acked\n",
                    i + 1,
                    bar(s.acked.len(), s.targeted.len()),
                    s.acked.len(),
                    s.targeted.len()
                ));
            } else {
                out.push_str(&format!(
                    "  stage {} {label}  not released (weirctl rollout promote {})\n",
                    i + 1,
                    self.id
                ));
            }
        }
        for n in &self.nacked {
            out.push_str(&format!("  NACK from {}: {}\n", n.instance_id, n.error));
        }
        out
    }
}

/// A 20-cell progress bar; an empty target is complete.
fn bar(done: usize, of: usize) -> String {
    const CELLS: usize = 20;
    let filled = (done * CELLS).checked_div(of).unwrap_or(CELLS).min(CELLS);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(CELLS - filled))
}

/// What a stage targets, shortly.
fn describe(s: &Stage) -> String {
    let mut parts: Vec<String> = s.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(p) = s.percent {
        parts.push(format!("{p}%"));
    }
    if let Some(list) = &s.instances {
        parts.push(format!("[{}]", list.join(",")));
    }
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway(id: &str, running: u64, report: &str, desired: u64) -> serde_json::Value {
        json!({"instance_id": id, "labels": {}, "connected": true, "running_version": running,
               "last_report": report, "last_report_version": if report == "nack" { 2 } else { running },
               "last_error": if report == "nack" { json!("no such topic") } else { json!(null) },
               "desired_version": desired})
    }

    #[test]
    fn counts_acks_per_released_stage_and_reports_nacks() {
        let rollout = json!({"id": 4, "version": 2, "current_stage": 0, "state": "active",
            "stages": [{"instances": ["a", "b"]}, {}]});
        let gws = json!({"gateways": [gateway("a", 2, "ack", 2), gateway("b", 1, "ack", 2),
                                      gateway("c", 1, "ack", 1)]});
        let s = RolloutStatus::compute(&rollout, &gws).unwrap();
        assert_eq!(s.stages[0].targeted, ["a", "b"]);
        assert_eq!(s.stages[0].acked, ["a"]);
        assert!(!s.stages[1].released && !s.done);
        assert!(s.render().contains("[##########----------] 1/2 acked"));

        let gws = json!({"gateways": [gateway("a", 2, "ack", 2), gateway("b", 2, "ack", 2)]});
        assert!(RolloutStatus::compute(&rollout, &gws).unwrap().done);

        let paused = json!({"id": 4, "version": 2, "current_stage": 0, "state": "paused",
            "stages": [{"instances": ["a", "b"]}, {}]});
        let gws = json!({"gateways": [gateway("a", 2, "ack", 2), gateway("b", 1, "nack", 1)]});
        let s = RolloutStatus::compute(&paused, &gws).unwrap();
        assert_eq!(s.nacked[0].instance_id, "b");
        assert!(!s.done);
    }
}
