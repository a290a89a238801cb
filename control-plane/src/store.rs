//! Storage behind one interface: SQLite (one process, a file) or PostgreSQL (several replicas),
//! both through sqlx's `Any` driver with runtime queries, so every statement is written once.
//! The schema lives in `migrations/<backend>/`, embedded in the binary and applied at start-up.
//!
//! Every change to what gateways should run happens in one transaction that first bumps the
//! single-row `change_counter`: that serialises writers (the row lock in PostgreSQL, the write
//! lock in SQLite), so checks such as "the new version is greater than every stored one" hold
//! across replicas, and lets other replicas notice the change by polling the counter.

use crate::state::Error;
use crate::targeting::Stage;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use weir_config::control_plane::Backend;

/// Records how long one storage operation took, when dropped (also on an error return), in
/// `weir_cp_storage_duration_seconds{op}`.
struct StorageTimer {
    op: &'static str,
    started: std::time::Instant,
}

impl StorageTimer {
    fn start(op: &'static str) -> Self {
        Self {
            op,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for StorageTimer {
    fn drop(&mut self) {
        metrics::histogram!("weir_cp_storage_duration_seconds", "op" => self.op)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// The storage: a connection pool and the backend it talks to.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    kind: Kind,
}

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Who made a change, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The token's configured name, or the gateway's instance id.
    pub name: String,
    /// `admin`, `viewer` or `gateway`.
    pub role: String,
}

/// A time as Unix milliseconds, shown as RFC 3339 in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub i64);

/// In the OpenAPI document: an RFC 3339 time, as [`Millis`] serializes.
impl utoipa::PartialSchema for Millis {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }
}

impl utoipa::ToSchema for Millis {}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64);
        s.collect_str(&humantime::format_rfc3339_millis(t))
    }
}

/// The current time.
pub fn now() -> Millis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// A stored policy version without its document.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PolicyMeta {
    /// The document's `version:`.
    pub version: u64,
    /// `yaml` or `json`.
    pub format: String,
    /// SHA-256 of the document text, hex.
    pub sha256: String,
    /// The name of the token that submitted it.
    pub created_by: String,
    /// When it was submitted.
    pub created_at: Millis,
}

/// A stored policy version with its document.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PolicyRecord {
    /// Everything but the document.
    #[serde(flatten)]
    pub meta: PolicyMeta,
    /// The document as submitted.
    pub document: String,
}

/// Where a rollout is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Its current stage is released; it can be promoted.
    Active,
    /// Held at its current stage (by an operator or a gateway's NACK).
    Paused,
    /// Released to every gateway.
    Completed,
    /// Withdrawn: the gateways it reached return to its previous version.
    RolledBack,
}

impl RolloutState {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
        }
    }

    fn parse(text: &str) -> Result<Self, Error> {
        Ok(match text {
            "active" => Self::Active,
            "paused" => Self::Paused,
            "completed" => Self::Completed,
            "rolled_back" => Self::RolledBack,
            other => return Err(Error::Storage(format!("unknown rollout state `{other}`"))),
        })
    }
}

/// A rollout of one policy version.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Rollout {
    /// Its id, increasing.
    pub id: i64,
    /// The version it releases.
    pub version: u64,
    /// The version released to every gateway when it started; what a rollback returns to.
    pub previous_version: Option<u64>,
    /// Its stages, cumulative.
    pub stages: Vec<Stage>,
    /// The index of the stage released so far.
    pub current_stage: usize,
    /// Where it is.
    pub state: RolloutState,
    /// The name of the token that started it.
    pub created_by: String,
    /// When it started.
    pub created_at: Millis,
    /// When its state or stage last changed.
    pub updated_at: Millis,
}

/// What an operator does to a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutOp {
    /// Release the next stage (after the last: every gateway).
    Promote,
    /// Hold at the current stage.
    Pause,
    /// Undo a pause.
    Resume,
    /// Return every gateway it reached to its previous version.
    Rollback,
}

impl RolloutOp {
    /// The audit action and API path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Rollback => "rollback",
        }
    }
}

/// A gateway as last seen.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GatewayRecord {
    /// Its stable id.
    pub instance_id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its weir-gateway version.
    pub build: String,
    /// The policy version it runs (0 = built-in keep-everything), as it last said.
    pub running_version: Option<u64>,
    /// `ack` or `nack`: its last answer to an assignment.
    pub last_report: Option<String>,
    /// The version that answer was about.
    pub last_report_version: Option<u64>,
    /// The NACK's error.
    pub last_error: Option<String>,
    /// When it answered.
    pub last_report_at: Option<Millis>,
    /// Whether a watch stream of it is open.
    pub connected: bool,
    /// When it first connected.
    pub first_seen: Millis,
    /// When it last connected, answered or disconnected.
    pub last_seen: Millis,
}

/// What a NACK did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nacked {
    /// The rollouts it paused: active ones of the version that reach the gateway.
    pub paused: Vec<i64>,
    /// Active rollouts of the version whose released stages do not target the gateway.
    pub ignored: Vec<i64>,
    /// The change counter after the change.
    pub counter: u64,
}

/// One audit log entry.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: i64,
    /// When.
    pub at: Millis,
    /// Who: the token's name (or the gateway's instance id).
    pub actor: String,
    /// The token's role.
    pub role: String,
    /// What, e.g. `policy.submit`, `rollout.promote`.
    pub action: String,
    /// The particulars.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl Rollout {
    /// Whether it reaches every gateway: completed, or a stage without conditions released
    /// (a rolled-back rollout keeps what it reached when it was rolled back).
    pub fn reaches_everyone(&self) -> bool {
        self.state == RolloutState::Completed
            || self.current_stage >= self.stages.len()
            || self
                .stages
                .iter()
                .take(self.current_stage.saturating_add(1))
                .any(Stage::is_everyone)
    }

    /// Whether it reaches this gateway.
    pub fn reaches(&self, instance_id: &str, labels: &BTreeMap<String, String>) -> bool {
        self.reaches_everyone()
            || crate::targeting::reached(&self.stages, self.current_stage, instance_id, labels)
    }

    /// The version the gateways it reaches run: its own, or (rolled back) its previous one.
    pub fn effective_version(&self) -> Option<u64> {
        if self.state == RolloutState::RolledBack {
            self.previous_version
        } else {
            Some(self.version)
        }
    }
}

/// The version every gateway that no newer rollout reaches runs: that of the newest rollout
/// reaching everyone (its previous one when it was rolled back). `rollouts` newest first.
fn baseline<'a>(rollouts: impl IntoIterator<Item = &'a Rollout>) -> Option<u64> {
    rollouts
        .into_iter()
        .find(|r| r.reaches_everyone())
        .and_then(Rollout::effective_version)
}

/// The rollouts that decide what gateways run now, newest first: every rollout down to the
/// newest one that reaches everyone, that one included; plus the documents they name.
#[derive(Clone, Debug, Default)]
pub struct Release {
    /// The deciding rollouts, newest first.
    pub rollouts: Vec<Rollout>,
    /// The documents of their versions.
    pub documents: BTreeMap<u64, String>,
}

impl Release {
    /// The version an instance should run: that of the newest rollout reaching it (for a
    /// rolled-back one, the version it replaced).
    pub fn desired(&self, instance_id: &str, labels: &BTreeMap<String, String>) -> Option<u64> {
        self.rollouts
            .iter()
            .find(|r| r.reaches(instance_id, labels))
            .and_then(Rollout::effective_version)
    }
}

/// The embedded migrations of one backend.
#[derive(Debug)]
struct Embedded(Kind);

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "initial",
    include_str!("../migrations/sqlite/0001_initial.sql"),
)];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "initial",
    include_str!("../migrations/postgres/0001_initial.sql"),
)];

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        let list = match self.0 {
            Kind::Sqlite => SQLITE_MIGRATIONS,
            Kind::Postgres => POSTGRES_MIGRATIONS,
        };
        let migrations = list
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    (*name).into(),
                    MigrationType::Simple,
                    (*sql).into(),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

fn db(e: sqlx::Error) -> Error {
    Error::Storage(e.to_string())
}

fn to_u64(v: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::Storage(format!("negative {what} {v} in the database")))
}

fn to_i64(v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::Invalid(format!("{v} is too large (at most {})", i64::MAX)))
}

impl Store {
    /// Connects, creating a SQLite file when missing, and applies pending migrations.
    pub async fn connect(backend: &Backend) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let (kind, url, max) = match backend {
            Backend::Sqlite(path) => {
                if let Some(dir) = path.parent()
                    && !dir.as_os_str().is_empty()
                    && !dir.exists()
                {
                    return Err(Error::Storage(format!(
                        "the directory of the SQLite file {} does not exist",
                        path.display()
                    )));
                }
                (
                    Kind::Sqlite,
                    format!("sqlite://{}?mode=rwc", path.display()),
                    4,
                )
            }
            Backend::Postgres {
                dsn,
                max_connections,
            } => (Kind::Postgres, dsn.clone(), *max_connections),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if kind == Kind::Sqlite {
                        // WAL lets the API read while a gateway's report is written; the
                        // busy timeout makes concurrent writers queue instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| match kind {
                // The DSN may hold a password: name the backend, not the URL.
                Kind::Postgres => Error::Storage(format!("cannot connect to PostgreSQL: {e}")),
                Kind::Sqlite => Error::Storage(format!("cannot open {url}: {e}")),
            })?;
        let migrator = Migrator::new(Embedded(kind))
            .await
            .map_err(|e| Error::Storage(format!("reading migrations: {e}")))?;
        migrator
            .run(&pool)
            .await
            .map_err(|e| Error::Storage(format!("applying migrations: {e}")))?;
        Ok(Store { pool, kind })
    }

    /// The backend.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The change counter: increases with every change to what gateways should run.
    pub async fn counter(&self) -> Result<u64, Error> {
        let _timer = StorageTimer::start("counter");
        let v: i64 = sqlx::query_scalar("SELECT counter FROM change_counter WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        to_u64(v, "change counter")
    }

    /// Starts a writing transaction: bumps the change counter first, which takes the write
    /// lock, and returns the new counter value.
    async fn begin_change(&self) -> Result<(Transaction<'static, Any>, u64), Error> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let v: i64 = sqlx::query_scalar(
            "UPDATE change_counter SET counter = counter + 1 WHERE id = 1 RETURNING counter",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        Ok((tx, to_u64(v, "change counter")?))
    }

    async fn audit(
        tx: &mut Transaction<'static, Any>,
        actor: &Actor,
        action: &str,
        details: serde_json::Value,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, role, action, details) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now().0)
        .bind(&actor.name)
        .bind(&actor.role)
        .bind(action)
        .bind(details.to_string())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Stores a validated document as a new version; refuses (Conflict) a version that is not
    /// greater than every stored one. Returns the stored version and the new change counter.
    pub async fn insert_policy(
        &self,
        version: u64,
        document: &str,
        format: &str,
        sha256: &str,
        actor: &Actor,
    ) -> Result<(PolicyMeta, u64), Error> {
        let _timer = StorageTimer::start("insert_policy");
        let (mut tx, counter) = self.begin_change().await?;
        let latest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM policy_versions")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        if let Some(latest) = latest
            && to_i64(version)? <= latest
        {
            return Err(Error::Conflict(format!(
                "version {version} is not greater than the latest stored version {latest}: \
                 number the new document {} or higher",
                latest + 1
            )));
        }
        let meta = PolicyMeta {
            version,
            format: format.to_string(),
            sha256: sha256.to_string(),
            created_by: actor.name.clone(),
            created_at: now(),
        };
        sqlx::query(
            "INSERT INTO policy_versions (version, document, format, sha256, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(to_i64(version)?)
        .bind(document)
        .bind(format)
        .bind(sha256)
        .bind(&actor.name)
        .bind(meta.created_at.0)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        Self::audit(
            &mut tx,
            actor,
            "policy.submit",
            serde_json::json!({"version": version, "format": format, "sha256": sha256}),
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok((meta, counter))
    }

    fn policy_meta(row: &AnyRow) -> Result<PolicyMeta, Error> {
        Ok(PolicyMeta {
            version: to_u64(row.try_get("version").map_err(db)?, "version")?,
            format: row.try_get("format").map_err(db)?,
            sha256: row.try_get("sha256").map_err(db)?,
            created_by: row.try_get("created_by").map_err(db)?,
            created_at: Millis(row.try_get("created_at").map_err(db)?),
        })
    }

    /// Every stored version, oldest first, without documents.
    pub async fn policies(&self) -> Result<Vec<PolicyMeta>, Error> {
        let _timer = StorageTimer::start("policies");
        let rows = sqlx::query(
            "SELECT version, format, sha256, created_by, created_at FROM policy_versions \
             ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(Self::policy_meta).collect()
    }

    /// One stored version with its document.
    pub async fn policy(&self, version: u64) -> Result<Option<PolicyRecord>, Error> {
        let _timer = StorageTimer::start("policy");
        let Ok(v) = i64::try_from(version) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT version, format, sha256, created_by, created_at, document \
             FROM policy_versions WHERE version = $1",
        )
        .bind(v)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|row| {
            Ok(PolicyRecord {
                meta: Self::policy_meta(&row)?,
                document: row.try_get("document").map_err(db)?,
            })
        })
        .transpose()
    }

    fn rollout(row: &AnyRow) -> Result<Rollout, Error> {
        let target: String = row.try_get("target").map_err(db)?;
        let stages: Vec<Stage> = serde_json::from_str(&target)
            .map_err(|e| Error::Storage(format!("stored rollout target unreadable: {e}")))?;
        let previous: Option<i64> = row.try_get("previous_version").map_err(db)?;
        let stage: i64 = row.try_get("current_stage").map_err(db)?;
        Ok(Rollout {
            id: row.try_get("id").map_err(db)?,
            version: to_u64(row.try_get("version").map_err(db)?, "version")?,
            previous_version: previous.map(|p| to_u64(p, "version")).transpose()?,
            stages,
            current_stage: usize::try_from(stage)
                .map_err(|_| Error::Storage(format!("bad stored stage {stage}")))?,
            state: RolloutState::parse(&row.try_get::<String, _>("state").map_err(db)?)?,
            created_by: row.try_get("created_by").map_err(db)?,
            created_at: Millis(row.try_get("created_at").map_err(db)?),
            updated_at: Millis(row.try_get("updated_at").map_err(db)?),
        })
    }

    const ROLLOUT_COLUMNS: &'static str = "id, version, previous_version, target, current_stage, \
         state, created_by, created_at, updated_at";

    /// Starts a rollout of `version` with `stages`; for the gateways it reaches it takes
    /// precedence over older rollouts. Refused (Conflict) when the version is already what every
    /// gateway runs. Its previous version is what every gateway ran before it.
    pub async fn start_rollout(
        &self,
        version: u64,
        stages: Vec<Stage>,
        actor: &Actor,
    ) -> Result<(Rollout, u64), Error> {
        let _timer = StorageTimer::start("start_rollout");
        let v = to_i64(version)?;
        let (mut tx, counter) = self.begin_change().await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT version FROM policy_versions WHERE version = $1")
                .bind(v)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        if exists.is_none() {
            return Err(Error::NotFound(format!(
                "policy version {version} does not exist: submit it first"
            )));
        }
        let previous = baseline(&Self::deciding(&mut tx).await?);
        if previous == Some(version) {
            return Err(Error::Conflict(format!(
                "version {version} is already released to every gateway \
                 (roll back newer rollouts to return their gateways to it)"
            )));
        }
        let previous = previous.map(to_i64).transpose()?;
        let state = RolloutState::Active;
        let target = serde_json::to_string(&stages)
            .map_err(|e| Error::Storage(format!("cannot encode the target: {e}")))?;
        let at = now();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO rollouts (version, previous_version, target, current_stage, state, \
             created_by, created_at, updated_at) VALUES ($1, $2, $3, 0, $4, $5, $6, $6) \
             RETURNING id",
        )
        .bind(v)
        .bind(previous)
        .bind(&target)
        .bind(state.as_str())
        .bind(&actor.name)
        .bind(at.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let rollout = Rollout {
            id,
            version,
            previous_version: previous.map(|p| to_u64(p, "version")).transpose()?,
            stages,
            current_stage: 0,
            state,
            created_by: actor.name.clone(),
            created_at: at,
            updated_at: at,
        };
        Self::audit(
            &mut tx,
            actor,
            "rollout.start",
            serde_json::json!({
                "rollout": id,
                "version": version,
                "previous_version": rollout.previous_version,
                "stages": rollout.stages,
                "state": state.as_str(),
            }),
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok((rollout, counter))
    }

    /// Promotes, pauses, resumes or rolls back a rollout, refusing (Conflict) what its state
    /// does not allow.
    pub async fn change_rollout(
        &self,
        id: i64,
        op: RolloutOp,
        actor: &Actor,
    ) -> Result<(Rollout, u64), Error> {
        let _timer = StorageTimer::start("change_rollout");
        let (mut tx, counter) = self.begin_change().await?;
        let row = sqlx::query(&format!(
            "SELECT {} FROM rollouts WHERE id = $1",
            Self::ROLLOUT_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .ok_or_else(|| Error::NotFound(format!("rollout {id} does not exist")))?;
        let mut r = Self::rollout(&row)?;
        let from = r.state;
        let refuse = |why: &str| {
            Err(Error::Conflict(format!(
                "cannot {} rollout {id}: it is {}{why}",
                op.as_str(),
                from.as_str()
            )))
        };
        match (op, from) {
            (RolloutOp::Promote, RolloutState::Active) => {
                if r.current_stage + 1 >= r.stages.len() {
                    r.state = RolloutState::Completed;
                } else {
                    r.current_stage += 1;
                }
            }
            (RolloutOp::Promote, RolloutState::Paused) => return refuse("; resume it first"),
            (RolloutOp::Pause, RolloutState::Active) => r.state = RolloutState::Paused,
            (RolloutOp::Resume, RolloutState::Paused) => r.state = RolloutState::Active,
            (
                RolloutOp::Rollback,
                RolloutState::Active | RolloutState::Paused | RolloutState::Completed,
            ) => {
                let newer: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM rollouts WHERE id > $1 AND state <> 'rolled_back' \
                     ORDER BY id LIMIT 1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
                if let Some(newer) = newer {
                    return refuse(&format!(
                        ", but rollout {newer} is newer: roll that one back first"
                    ));
                }
                if r.previous_version.is_none() {
                    return refuse(
                        ", but no version was released to every gateway before it, \
                         so there is nothing to return to",
                    );
                }
                if r.reaches_everyone() {
                    // Remember that it reached everyone: all return to the previous version.
                    r.current_stage = r.stages.len();
                }
                r.state = RolloutState::RolledBack;
            }
            _ => return refuse(""),
        }
        r.updated_at = now();
        sqlx::query(
            "UPDATE rollouts SET state = $1, current_stage = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(r.state.as_str())
        .bind(i64::try_from(r.current_stage).unwrap_or(i64::MAX))
        .bind(r.updated_at.0)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        Self::audit(
            &mut tx,
            actor,
            &format!("rollout.{}", op.as_str()),
            serde_json::json!({
                "rollout": id,
                "version": r.version,
                "from": from.as_str(),
                "to": r.state.as_str(),
                "stage": r.current_stage,
            }),
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok((r, counter))
    }

    /// Every rollout, newest first.
    pub async fn rollouts(&self) -> Result<Vec<Rollout>, Error> {
        let _timer = StorageTimer::start("rollouts");
        let rows = sqlx::query(&format!(
            "SELECT {} FROM rollouts ORDER BY id DESC",
            Self::ROLLOUT_COLUMNS
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(Self::rollout).collect()
    }

    /// One rollout.
    pub async fn rollout_by_id(&self, id: i64) -> Result<Option<Rollout>, Error> {
        let _timer = StorageTimer::start("rollout_by_id");
        let row = sqlx::query(&format!(
            "SELECT {} FROM rollouts WHERE id = $1",
            Self::ROLLOUT_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(Self::rollout).transpose()
    }

    /// The rollouts that decide what gateways run now, and their documents.
    pub async fn release(&self) -> Result<Release, Error> {
        let _timer = StorageTimer::start("release");
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let rollouts = Self::deciding(&mut conn).await?;
        let mut documents = BTreeMap::new();
        for version in rollouts.iter().filter_map(Rollout::effective_version) {
            if documents.contains_key(&version) {
                continue;
            }
            let doc: String =
                sqlx::query_scalar("SELECT document FROM policy_versions WHERE version = $1")
                    .bind(to_i64(version)?)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db)?;
            documents.insert(version, doc);
        }
        Ok(Release {
            rollouts,
            documents,
        })
    }

    /// Rollouts newest first, down to the newest one that reaches everyone.
    async fn deciding(conn: &mut sqlx::AnyConnection) -> Result<Vec<Rollout>, Error> {
        let query = format!(
            "SELECT {} FROM rollouts ORDER BY id DESC",
            Self::ROLLOUT_COLUMNS
        );
        let mut rollouts = Vec::new();
        let mut rows = sqlx::query(&query).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await.map_err(db)? {
            let r = Self::rollout(&row)?;
            let everyone = r.reaches_everyone();
            rollouts.push(r);
            if everyone {
                break;
            }
        }
        Ok(rollouts)
    }

    /// How many rollouts are in each state.
    pub async fn rollout_states(&self) -> Result<Vec<(String, u64)>, Error> {
        let _timer = StorageTimer::start("rollout_states");
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM rollouts GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get("n").map_err(db)?;
                Ok((row.try_get("state").map_err(db)?, to_u64(n, "count")?))
            })
            .collect()
    }

    /// Marks every gateway disconnected: at start-up of the only process using the database.
    pub async fn reset_connections(&self) -> Result<(), Error> {
        let _timer = StorageTimer::start("reset_connections");
        sqlx::query("UPDATE gateways SET connected = 0")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Records a gateway's Hello: labels, build, running version; one more open stream.
    pub async fn gateway_connected(
        &self,
        instance_id: &str,
        labels: &BTreeMap<String, String>,
        build: &str,
        running: u64,
    ) -> Result<(), Error> {
        let _timer = StorageTimer::start("gateway_connected");
        let labels = serde_json::to_string(labels)
            .map_err(|e| Error::Storage(format!("cannot encode labels: {e}")))?;
        let at = now().0;
        sqlx::query(
            "INSERT INTO gateways (instance_id, labels, build, running_version, connected, \
             first_seen, last_seen) VALUES ($1, $2, $3, $4, 1, $5, $5) \
             ON CONFLICT (instance_id) DO UPDATE SET labels = excluded.labels, \
             build = excluded.build, running_version = excluded.running_version, \
             connected = gateways.connected + 1, last_seen = excluded.last_seen",
        )
        .bind(instance_id)
        .bind(labels)
        .bind(build)
        .bind(to_i64(running)?)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// One stream of the gateway closed.
    pub async fn gateway_disconnected(&self, instance_id: &str) -> Result<(), Error> {
        let _timer = StorageTimer::start("gateway_disconnected");
        sqlx::query(
            "UPDATE gateways SET connected = CASE WHEN connected > 0 THEN connected - 1 ELSE 0 END, \
             last_seen = $1 WHERE instance_id = $2",
        )
        .bind(now().0)
        .bind(instance_id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// The gateway applied `version`.
    pub async fn record_ack(&self, instance_id: &str, version: u64) -> Result<(), Error> {
        let _timer = StorageTimer::start("record_ack");
        let at = now().0;
        sqlx::query(
            "UPDATE gateways SET running_version = $1, last_report = 'ack', \
             last_report_version = $1, last_error = NULL, last_report_at = $2, last_seen = $2 \
             WHERE instance_id = $3",
        )
        .bind(to_i64(version)?)
        .bind(at)
        .bind(instance_id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// The gateway refused `version`: every active rollout of it that reaches this gateway
    /// (with these labels) at its current stage pauses. Returns the paused rollouts' ids, the
    /// ids of active rollouts of that version that do not reach it (their stage does not
    /// target this gateway, so its NACK does not pause them), and the new change counter.
    pub async fn record_nack(
        &self,
        instance_id: &str,
        labels: &BTreeMap<String, String>,
        version: u64,
        error: &str,
    ) -> Result<Nacked, Error> {
        let _timer = StorageTimer::start("record_nack");
        let v = to_i64(version)?;
        let (mut tx, counter) = self.begin_change().await?;
        let at = now().0;
        sqlx::query(
            "UPDATE gateways SET last_report = 'nack', last_report_version = $1, \
             last_error = $2, last_report_at = $3, last_seen = $3 WHERE instance_id = $4",
        )
        .bind(v)
        .bind(error)
        .bind(at)
        .bind(instance_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let rows = sqlx::query(&format!(
            "SELECT {} FROM rollouts WHERE version = $1 AND state = 'active' ORDER BY id",
            Self::ROLLOUT_COLUMNS
        ))
        .bind(v)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut nacked = Nacked {
            paused: Vec::new(),
            ignored: Vec::new(),
            counter,
        };
        for row in &rows {
            let r = Self::rollout(row)?;
            if r.reaches(instance_id, labels) {
                nacked.paused.push(r.id);
            } else {
                nacked.ignored.push(r.id);
            }
        }
        let actor = Actor {
            name: instance_id.to_string(),
            role: "gateway".into(),
        };
        for id in &nacked.paused {
            sqlx::query("UPDATE rollouts SET state = 'paused', updated_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            Self::audit(
                &mut tx,
                &actor,
                "rollout.pause",
                serde_json::json!({
                    "rollout": id,
                    "version": version,
                    "from": "active",
                    "to": "paused",
                    "reason": format!("NACK from {instance_id}: {error}"),
                }),
            )
            .await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(nacked)
    }

    /// Deletes the gateways with no open stream last seen before `before`; returns how many.
    pub async fn prune_gateways(&self, before: Millis) -> Result<u64, Error> {
        let _timer = StorageTimer::start("prune_gateways");
        let done = sqlx::query("DELETE FROM gateways WHERE connected = 0 AND last_seen < $1")
            .bind(before.0)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }

    /// Deletes one gateway's record, refusing (Conflict) while it has an open stream, and
    /// writes the audit entry.
    pub async fn delete_gateway(&self, instance_id: &str, actor: &Actor) -> Result<(), Error> {
        let _timer = StorageTimer::start("delete_gateway");
        let mut tx = self.pool.begin().await.map_err(db)?;
        let connected: Option<i64> =
            sqlx::query_scalar("SELECT connected FROM gateways WHERE instance_id = $1")
                .bind(instance_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        match connected {
            None => {
                return Err(Error::NotFound(format!(
                    "gateway {instance_id} is not in the gateway list"
                )));
            }
            Some(n) if n > 0 => {
                return Err(Error::Conflict(format!(
                    "gateway {instance_id} has an open watch stream: stop it (or revoke its \
                     token) first, or it would reappear at once"
                )));
            }
            Some(_) => {}
        }
        sqlx::query("DELETE FROM gateways WHERE instance_id = $1")
            .bind(instance_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Self::audit(
            &mut tx,
            actor,
            "gateway.delete",
            serde_json::json!({ "instance_id": instance_id }),
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// Every gateway ever seen, by instance id.
    pub async fn gateways(&self) -> Result<Vec<GatewayRecord>, Error> {
        let _timer = StorageTimer::start("gateways");
        let rows = sqlx::query(
            "SELECT instance_id, labels, build, running_version, last_report, \
             last_report_version, last_error, last_report_at, connected, first_seen, last_seen \
             FROM gateways ORDER BY instance_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                let labels: String = row.try_get("labels").map_err(db)?;
                let opt_u64 = |name: &str| -> Result<Option<u64>, Error> {
                    let v: Option<i64> = row.try_get(name).map_err(db)?;
                    v.map(|v| to_u64(v, name)).transpose()
                };
                Ok(GatewayRecord {
                    instance_id: row.try_get("instance_id").map_err(db)?,
                    labels: serde_json::from_str(&labels)
                        .map_err(|e| Error::Storage(format!("stored labels unreadable: {e}")))?,
                    build: row.try_get("build").map_err(db)?,
                    running_version: opt_u64("running_version")?,
                    last_report: row.try_get("last_report").map_err(db)?,
                    last_report_version: opt_u64("last_report_version")?,
                    last_error: row.try_get("last_error").map_err(db)?,
                    last_report_at: row
                        .try_get::<Option<i64>, _>("last_report_at")
                        .map_err(db)?
                        .map(Millis),
                    connected: row.try_get::<i64, _>("connected").map_err(db)? > 0,
                    first_seen: Millis(row.try_get("first_seen").map_err(db)?),
                    last_seen: Millis(row.try_get("last_seen").map_err(db)?),
                })
            })
            .collect()
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, Error> {
        let _timer = StorageTimer::start("audit_log");
        let rows = sqlx::query(
            "SELECT id, at, actor, role, action, details FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                let details: String = row.try_get("details").map_err(db)?;
                Ok(AuditEntry {
                    id: row.try_get("id").map_err(db)?,
                    at: Millis(row.try_get("at").map_err(db)?),
                    actor: row.try_get("actor").map_err(db)?,
                    role: row.try_get("role").map_err(db)?,
                    action: row.try_get("action").map_err(db)?,
                    details: serde_json::from_str(&details).map_err(|e| {
                        Error::Storage(format!("stored audit details unreadable: {e}"))
                    })?,
                })
            })
            .collect()
    }
}
