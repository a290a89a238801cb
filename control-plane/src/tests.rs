//! Storage and rollout semantics through `ControlPlane`, on SQLite always and on PostgreSQL
//! when `WEIR_TEST_POSTGRES_DSN` names a server (scripts/test.sh starts a throwaway one): each
//! test gets a database of its own there.

use crate::auth::{Caller, Tokens};
use crate::state::{ControlPlane, Error, GatewayHello};
use crate::store::{RolloutOp, RolloutState};
use crate::targeting::{Target, in_percent};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use weir_config::auth::hash_token;
use weir_config::control_plane::{Backend, Role};

fn admin() -> Caller {
    Caller {
        name: "ops".into(),
        role: Role::Admin,
    }
}

fn tokens() -> Tokens {
    Tokens::new(vec![
        ("ops".into(), Role::Admin, hash_token(b"a")),
        ("gws".into(), Role::Gateway, hash_token(b"g")),
    ])
}

fn doc(version: u64) -> String {
    format!("version: {version}\nsampling:\n  default_probability: 0.5\n")
}

/// A fresh database per test and backend; the temp dir keeps a SQLite file alive.
struct Fixture {
    cp: Arc<ControlPlane>,
    backend: Backend,
    _dir: Option<tempfile::TempDir>,
    name: &'static str,
}

async fn backends() -> Vec<Fixture> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut out = Vec::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = Backend::Sqlite(dir.path().join("cp.db"));
    out.push(Fixture {
        cp: ControlPlane::open(&backend, tokens())
            .await
            .expect("sqlite"),
        backend,
        _dir: Some(dir),
        name: "sqlite",
    });
    if let Ok(dsn) = std::env::var("WEIR_TEST_POSTGRES_DSN")
        && !dsn.is_empty()
    {
        sqlx::any::install_default_drivers();
        let db = format!(
            "weir_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = sqlx::AnyConnection::connect(&dsn)
            .await
            .expect("connect to WEIR_TEST_POSTGRES_DSN");
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        let base = dsn.rsplit_once('/').map_or(dsn.as_str(), |(b, _)| b);
        let backend = Backend::Postgres {
            dsn: format!("{base}/{db}"),
            max_connections: 4,
        };
        out.push(Fixture {
            cp: ControlPlane::open(&backend, tokens())
                .await
                .expect("postgres"),
            backend,
            _dir: None,
            name: "postgres",
        });
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn desired(cp: &ControlPlane, id: &str, l: &BTreeMap<String, String>) -> Option<u64> {
    cp.desired_policy(id, l)
        .await
        .expect("desired")
        .map(|p| p.version)
}

#[tokio::test]
async fn policies_are_validated_versioned_and_diffed() {
    for f in backends().await {
        let cp = &f.cp;
        let meta = cp.submit_policy(&doc(1), &admin()).await.expect(f.name);
        assert_eq!((meta.version, meta.format.as_str()), (1, "yaml"));
        let json = r#"{"version": 3, "sampling": {"default_probability": 0.25}}"#;
        assert_eq!(
            cp.submit_policy(json, &admin()).await.unwrap().format,
            "json"
        );
        match cp.submit_policy(&doc(2), &admin()).await {
            Err(Error::Conflict(m)) => assert!(m.contains("latest stored version 3"), "{m}"),
            other => panic!("{}: {other:?}", f.name),
        }
        match cp
            .submit_policy(
                "version: 4\nsampling:\n  default_probability: 2\n",
                &admin(),
            )
            .await
        {
            Err(Error::Invalid(m)) => assert!(m.starts_with("sampling.default_probability"), "{m}"),
            other => panic!("{}: {other:?}", f.name),
        }
        let list = cp.policies().await.unwrap();
        assert_eq!(
            list.iter().map(|p| p.version).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(cp.policy(3).await.unwrap().document, json);
        assert!(matches!(cp.policy(2).await, Err(Error::NotFound(_))));
        let diff = cp.diff(1, 3).await.unwrap();
        assert!(
            diff.contains("--- version 1") && diff.contains("-version: 1"),
            "{diff}"
        );
        assert!(diff.contains(&format!("+{json}")), "{diff}");
        let audit = cp.audit_log(10).await.unwrap();
        assert_eq!(
            audit.len(),
            2,
            "{}: refused submissions are not changes",
            f.name
        );
        assert_eq!(audit[0].action, "policy.submit");
        assert_eq!(audit[0].actor, "ops");
        assert_eq!(audit[0].details["version"], 3);
    }
}

#[tokio::test]
async fn a_canary_reaches_exactly_its_share_then_promote_and_rollback() {
    for f in backends().await {
        let cp = &f.cp;
        for v in 1..=2 {
            cp.submit_policy(&doc(v), &admin()).await.unwrap();
        }
        let none = labels(&[]);
        assert_eq!(
            desired(cp, "gw-1", &none).await,
            None,
            "nothing released yet"
        );
        let r1 = cp
            .start_rollout(1, Target::default(), &admin())
            .await
            .unwrap();
        // It reaches everyone at once, and stays active (a NACK can still pause it).
        assert_eq!(r1.state, RolloutState::Active);
        let ids: Vec<String> = (0..40).map(|i| format!("gw-{i}")).collect();
        for id in &ids {
            assert_eq!(desired(cp, id, &none).await, Some(1));
        }
        let mut changes = cp.changes();
        let before = *changes.borrow_and_update();
        let canary = Target {
            percent: Some(34.0),
            ..Target::default()
        };
        let r2 = cp.start_rollout(2, canary, &admin()).await.unwrap();
        assert!(changes.has_changed().unwrap() && *changes.borrow() > before);
        assert_eq!(r2.previous_version, Some(1));
        for id in &ids {
            let want = if in_percent(id, 34.0) { 2 } else { 1 };
            assert_eq!(desired(cp, id, &none).await, Some(want), "{}: {id}", f.name);
        }
        match cp.start_rollout(1, Target::default(), &admin()).await {
            Err(Error::Conflict(m)) => assert!(m.contains("already released"), "{m}"),
            other => panic!("{other:?}"),
        }
        let done = cp
            .change_rollout(r2.id, RolloutOp::Promote, &admin())
            .await
            .unwrap();
        assert_eq!(done.state, RolloutState::Completed);
        for id in &ids {
            assert_eq!(desired(cp, id, &none).await, Some(2));
        }
        let back = cp
            .change_rollout(r2.id, RolloutOp::Rollback, &admin())
            .await
            .unwrap();
        assert_eq!(back.state, RolloutState::RolledBack);
        for id in &ids {
            assert_eq!(desired(cp, id, &none).await, Some(1));
        }
        assert!(matches!(
            cp.change_rollout(r2.id, RolloutOp::Rollback, &admin())
                .await,
            Err(Error::Conflict(_))
        ));
        // Nothing was released before the first rollout: it cannot be rolled back.
        match cp
            .change_rollout(r1.id, RolloutOp::Rollback, &admin())
            .await
        {
            Err(Error::Conflict(m)) => assert!(m.contains("nothing to return to"), "{m}"),
            other => panic!("{other:?}"),
        }
        let actions: Vec<String> = cp
            .audit_log(100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            actions[..4],
            [
                "rollout.rollback",
                "rollout.promote",
                "rollout.start",
                "rollout.start"
            ]
        );
    }
}

#[tokio::test]
async fn stages_are_cumulative_and_selectors_match_labels() {
    for f in backends().await {
        let cp = &f.cp;
        for v in 1..=2 {
            cp.submit_policy(&doc(v), &admin()).await.unwrap();
        }
        cp.start_rollout(1, Target::default(), &admin())
            .await
            .unwrap();
        let target: Target = serde_json::from_str(
            r#"{"stages": [{"instances": ["gw-a"]}, {"selector": {"region": "eu"}}, {}]}"#,
        )
        .unwrap();
        let r = cp.start_rollout(2, target, &admin()).await.unwrap();
        let eu = labels(&[("region", "eu")]);
        let us = labels(&[("region", "us")]);
        assert_eq!(desired(cp, "gw-a", &us).await, Some(2));
        assert_eq!(desired(cp, "gw-b", &eu).await, Some(1));
        let r = cp
            .change_rollout(r.id, RolloutOp::Promote, &admin())
            .await
            .unwrap();
        assert_eq!((r.current_stage, r.state), (1, RolloutState::Active));
        assert_eq!(desired(cp, "gw-a", &us).await, Some(2), "stages accumulate");
        assert_eq!(desired(cp, "gw-b", &eu).await, Some(2));
        assert_eq!(desired(cp, "gw-c", &us).await, Some(1));
        cp.change_rollout(r.id, RolloutOp::Pause, &admin())
            .await
            .unwrap();
        match cp.change_rollout(r.id, RolloutOp::Promote, &admin()).await {
            Err(Error::Conflict(m)) => assert!(m.contains("resume it first"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            desired(cp, "gw-b", &eu).await,
            Some(2),
            "a pause keeps assignments"
        );
        cp.change_rollout(r.id, RolloutOp::Resume, &admin())
            .await
            .unwrap();
        cp.change_rollout(r.id, RolloutOp::Promote, &admin())
            .await
            .unwrap();
        let r = cp
            .change_rollout(r.id, RolloutOp::Promote, &admin())
            .await
            .unwrap();
        assert_eq!(r.state, RolloutState::Completed);
        assert_eq!(desired(cp, "gw-c", &us).await, Some(2));
        assert!(matches!(
            cp.start_rollout(2, Target::default(), &admin()).await,
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            cp.start_rollout(9, Target::default(), &admin()).await,
            Err(Error::NotFound(_))
        ));
    }
}

#[tokio::test]
async fn gateways_acks_and_a_nack_that_pauses_the_rollout() {
    for f in backends().await {
        let cp = &f.cp;
        for v in 1..=2 {
            cp.submit_policy(&doc(v), &admin()).await.unwrap();
        }
        cp.start_rollout(1, Target::default(), &admin())
            .await
            .unwrap();
        let hello = |id: &str| GatewayHello {
            instance_id: id.into(),
            labels: labels(&[("zone", "z1")]),
            current_version: 1,
            build: "0.1.0".into(),
        };
        cp.gateway_connected(&hello("gw-a")).await.unwrap();
        cp.gateway_connected(&hello("gw-b")).await.unwrap();
        let target = Target {
            instances: Some(vec!["gw-a".into(), "gw-b".into()]),
            ..Target::default()
        };
        let r = cp.start_rollout(2, target, &admin()).await.unwrap();
        cp.record_ack("gw-a", 2).await.unwrap();
        let mut changes = cp.changes();
        changes.borrow_and_update();
        cp.record_nack("gw-b", &labels(&[("zone", "z1")]), 2, "topic `x` unknown")
            .await
            .unwrap();
        assert!(
            changes.has_changed().unwrap(),
            "a NACK that pauses is a change"
        );
        let r = cp.rollout(r.id).await.unwrap();
        assert_eq!(r.state, RolloutState::Paused);
        let gws = cp.gateways().await.unwrap();
        let (a, a_desired) = &gws[0];
        let (b, _) = &gws[1];
        assert_eq!(
            (
                a.instance_id.as_str(),
                a.running_version,
                a.last_report.as_deref(),
                *a_desired
            ),
            ("gw-a", Some(2), Some("ack"), Some(2))
        );
        assert_eq!(
            (
                b.running_version,
                b.last_report.as_deref(),
                b.last_error.as_deref()
            ),
            (Some(1), Some("nack"), Some("topic `x` unknown"))
        );
        assert!(a.connected && a.labels["zone"] == "z1");
        cp.gateway_disconnected("gw-a").await.unwrap();
        let gws = cp.gateways().await.unwrap();
        assert!(!gws[0].0.connected && gws[1].0.connected);
        let entry = &cp.audit_log(1).await.unwrap()[0];
        assert_eq!(
            (
                entry.action.as_str(),
                entry.actor.as_str(),
                entry.role.as_str()
            ),
            ("rollout.pause", "gw-b", "gateway")
        );
        assert!(
            entry.details["reason"]
                .as_str()
                .unwrap()
                .contains("topic `x` unknown")
        );
    }
}

#[tokio::test]
async fn gateway_tokens_are_checked() {
    let f = backends().await.remove(0);
    assert_eq!(
        f.cp.gateway_caller(Some("g")).map(|c| c.name),
        Some("gws".into())
    );
    assert!(f.cp.gateway_caller(Some("Bearer g")).is_some());
    assert!(
        f.cp.gateway_caller(Some("a")).is_none(),
        "an admin token is not a gateway token"
    );
    assert!(f.cp.gateway_caller(Some("x")).is_none());
    assert!(f.cp.gateway_caller(None).is_none());
}

#[tokio::test]
async fn a_nack_from_a_gateway_the_stage_does_not_target_pauses_nothing() {
    for f in backends().await {
        let cp = &f.cp;
        for v in 1..=2 {
            cp.submit_policy(&doc(v), &admin()).await.unwrap();
        }
        cp.start_rollout(1, Target::default(), &admin())
            .await
            .unwrap();
        // A canary of version 2 in region eu; a gateway claiming us NACKs version 2.
        let canary = Target {
            selector: labels(&[("region", "eu")]),
            ..Target::default()
        };
        let r = cp.start_rollout(2, canary, &admin()).await.unwrap();
        let nacked = cp
            .record_nack("gw-us", &labels(&[("region", "us")]), 2, "no")
            .await
            .unwrap();
        assert_eq!((nacked.paused, nacked.ignored), (vec![], vec![r.id]));
        assert_eq!(
            cp.rollout(r.id).await.unwrap().state,
            RolloutState::Active,
            "{}",
            f.name
        );
        // One the stage targets still pauses it.
        let nacked = cp
            .record_nack("gw-eu", &labels(&[("region", "eu")]), 2, "no")
            .await
            .unwrap();
        assert_eq!(nacked.paused, vec![r.id]);
        assert_eq!(cp.rollout(r.id).await.unwrap().state, RolloutState::Paused);
    }
}

#[tokio::test]
async fn gateways_not_seen_for_the_ttl_are_pruned_and_admins_delete_them() {
    for f in backends().await {
        let cp = &f.cp;
        let hello = |id: &str| GatewayHello {
            instance_id: id.into(),
            labels: labels(&[]),
            current_version: 0,
            build: "t".into(),
        };
        for id in ["gone", "here", "old"] {
            cp.gateway_connected(&hello(id)).await.unwrap();
        }
        cp.gateway_disconnected("gone").await.unwrap();
        cp.gateway_disconnected("old").await.unwrap();
        // A long TTL keeps everyone; a short one removes the disconnected ones only.
        assert_eq!(
            cp.prune_gateways(Duration::from_secs(3600)).await.unwrap(),
            0
        );
        // "old" comes back and leaves again: only "gone" was away longer than the TTL.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        cp.gateway_connected(&hello("old")).await.unwrap();
        cp.gateway_disconnected("old").await.unwrap();
        let pruned = cp.prune_gateways(Duration::from_millis(600)).await.unwrap();
        let ids: Vec<String> = cp
            .gateways()
            .await
            .unwrap()
            .into_iter()
            .map(|(g, _)| g.instance_id)
            .collect();
        assert_eq!(
            (pruned, ids),
            (1, vec!["here".to_string(), "old".into()]),
            "{}",
            f.name
        );

        // DELETE: refused while connected, unknown ids are 404, and it is audited.
        match cp.delete_gateway("here", &admin()).await {
            Err(Error::Conflict(m)) => assert!(m.contains("open watch stream"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cp.delete_gateway("nobody", &admin()).await,
            Err(Error::NotFound(_))
        ));
        cp.delete_gateway("old", &admin()).await.unwrap();
        assert_eq!(cp.gateways().await.unwrap().len(), 1);
        let entry = &cp.audit_log(1).await.unwrap()[0];
        assert_eq!(
            (entry.action.as_str(), entry.details["instance_id"].as_str()),
            ("gateway.delete", Some("old"))
        );
    }
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Sqlite(dir.path().join("cp.db"));
    {
        let cp = ControlPlane::open(&backend, tokens()).await.unwrap();
        cp.submit_policy(&doc(1), &admin()).await.unwrap();
        cp.start_rollout(1, Target::default(), &admin())
            .await
            .unwrap();
        cp.store().close().await;
    }
    let cp = ControlPlane::open(&backend, tokens()).await.unwrap();
    assert_eq!(desired(&cp, "x", &labels(&[])).await, Some(1));
    assert_eq!(cp.policies().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_replica_sees_changes_made_through_another() {
    for f in backends().await {
        let other = ControlPlane::open(&f.backend, tokens())
            .await
            .expect(f.name);
        let stop = tokio_util::sync::CancellationToken::new();
        other.spawn_change_poller(std::time::Duration::from_millis(50), stop.clone());
        let mut changes = other.changes();
        changes.borrow_and_update();
        f.cp.submit_policy(&doc(1), &admin()).await.unwrap();
        f.cp.start_rollout(1, Target::default(), &admin())
            .await
            .unwrap();
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), changes.changed()).await;
        assert!(matches!(woke, Ok(Ok(()))), "{}: no change seen", f.name);
        // The woken replica reads the new release, not a cached one.
        assert_eq!(
            desired(&other, "gw", &labels(&[])).await,
            Some(1),
            "{}",
            f.name
        );
        stop.cancel();
    }
}

#[tokio::test]
async fn a_newer_rollout_wins_and_its_rollback_returns_to_what_was_before() {
    for f in backends().await {
        let cp = &f.cp;
        for v in 1..=3 {
            cp.submit_policy(&doc(v), &admin()).await.unwrap();
        }
        let r1 = cp
            .start_rollout(1, Target::default(), &admin())
            .await
            .unwrap();
        let canary = Target {
            instances: Some(vec!["gw-a".into()]),
            ..Target::default()
        };
        let r2 = cp.start_rollout(2, canary, &admin()).await.unwrap();
        cp.record_nack("gw-a", &labels(&[]), 2, "bad")
            .await
            .unwrap();
        assert_eq!(cp.rollout(r2.id).await.unwrap().state, RolloutState::Paused);
        // A fixed version to everyone supersedes the paused canary.
        let r3 = cp
            .start_rollout(3, Target::default(), &admin())
            .await
            .unwrap();
        assert_eq!(r3.previous_version, Some(1), "{}", f.name);
        let none = labels(&[]);
        assert_eq!(desired(cp, "gw-a", &none).await, Some(3));
        assert_eq!(desired(cp, "gw-b", &none).await, Some(3));
        // A NACK pauses a rollout that reaches everyone, too.
        cp.record_nack("gw-b", &labels(&[]), 3, "bad too")
            .await
            .unwrap();
        assert_eq!(cp.rollout(r3.id).await.unwrap().state, RolloutState::Paused);
        // Rolling it back returns everyone to version 1, the canary's gateway included:
        // the paused canary of 2 is not revived.
        cp.change_rollout(r3.id, RolloutOp::Rollback, &admin())
            .await
            .unwrap();
        assert_eq!(desired(cp, "gw-a", &none).await, Some(1), "{}", f.name);
        assert_eq!(desired(cp, "gw-b", &none).await, Some(1));
        // Only the newest rollout that is not rolled back can be rolled back.
        match cp
            .change_rollout(r1.id, RolloutOp::Rollback, &admin())
            .await
        {
            Err(Error::Conflict(m)) => assert!(m.contains("is newer"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn healthz_reuses_its_last_check_for_a_moment() {
    let f = backends().await.remove(0);
    f.cp.health().await.unwrap();
    // Storage gone: the next second still answers from the last check, without a query...
    f.cp.store().close().await;
    f.cp.health().await.unwrap();
    // ...and the check after that sees it.
    tokio::time::sleep(crate::state::HEALTH_CACHE + Duration::from_millis(100)).await;
    assert!(matches!(f.cp.health().await, Err(Error::Storage(_))));
}

/// A valid document of about `bytes` bytes: routing rules, each with a regular expression.
fn big_document(version: u64, bytes: usize) -> String {
    let mut doc = format!("version: {version}\nrouting:\n  rules:\n");
    let mut i = 0;
    while doc.len() < bytes {
        doc.push_str(&format!(
            "    - {{ name: r{i}, match: {{ span_attribute: a, regex: '^(x|y){{1,20}}z{i}[a-f]+$' }}, action: drop }}\n"
        ));
        i += 1;
    }
    doc
}

#[tokio::test]
async fn documents_are_bounded_and_validated_off_the_async_threads() {
    let f = backends().await.remove(0);
    let too_big = big_document(1, crate::state::MAX_DOCUMENT_BYTES + 1);
    assert!(matches!(
        f.cp.submit_policy(&too_big, &admin()).await,
        Err(Error::TooLarge(_))
    ));
    assert!(matches!(
        f.cp.validate(&too_big).await,
        Err(Error::TooLarge(_))
    ));
    // This test runs on one thread: a ticker only advances while validation is elsewhere.
    let doc = big_document(1, 400_000);
    let ticks = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&ticks);
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    tokio::task::yield_now().await;
    let started = std::time::Instant::now();
    let v = f.cp.validate(&doc).await.unwrap();
    let took = started.elapsed();
    ticker.abort();
    assert_eq!(v.version, 1);
    let seen = ticks.load(Ordering::Relaxed);
    assert!(
        took < Duration::from_millis(50) || seen >= 3,
        "validation took {took:?} and the async thread ticked {seen} times"
    );
}
