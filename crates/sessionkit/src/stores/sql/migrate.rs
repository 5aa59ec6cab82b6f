//! The runner for the embedded, versioned migrations of the SQL stores and the audit trail.
//!
//! Guarantees: each component (`sessions`, `audit`) has an ordered list of migrations; at
//! connect the runner takes a lock (an advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on
//! SQLite), reads the versions recorded in `sessionkit_migrations`, applies the missing ones and
//! records them, all in one transaction: several processes may start at once, and a crash
//! mid-way leaves the schema as it was. A database migrated by a newer release is used as it
//! is (migrations only add), with a warning.

use crate::store::StoreError;

use super::{store_error, to_db};

/// One step of a component's schema.
#[derive(Debug)]
pub(crate) struct Migration {
    /// Strictly increasing within a component, starting at 1.
    pub(crate) version: i64,
    /// A few words for the `sessionkit_migrations` table.
    pub(crate) name: &'static str,
    /// Statements run in order, inside the migration transaction; each may hold several,
    /// separated by `;` (a migration's `.sql` file).
    pub(crate) statements: &'static [&'static str],
}

fn now_millis() -> i64 {
    use crate::clock::Clock as _;
    to_db(crate::clock::SystemClock.now().as_millis())
}

/// Applies the missing migrations of `component` on PostgreSQL, in one transaction under a
/// database-wide advisory lock.
#[cfg(feature = "postgres")]
pub(crate) async fn migrate_postgres(
    conn: &mut sqlx::PgConnection,
    component: &'static str,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    use sqlx::Connection as _;
    // An arbitrary constant that names "sessionkit schema changes" among advisory locks.
    const LOCK: i64 = 0x5e55_1014_0000_0001;
    let e = |e| store_error(MIGRATING, e);
    let mut tx = conn.begin().await.map_err(e)?;
    sqlx::query(include_str!("postgres/migrations_lock.sql"))
        .bind(LOCK)
        .execute(&mut *tx)
        .await
        .map_err(e)?;
    let sql = RunnerSql {
        create: include_str!("postgres/migrations_table.sql"),
        current: include_str!("postgres/migrations_current.sql"),
        record: include_str!("postgres/migrations_record.sql"),
    };
    apply_missing::<sqlx::Postgres>(&mut tx, component, migrations, &sql).await?;
    tx.commit().await.map_err(e)
}

/// Applies the missing migrations of `component` on SQLite, in one `BEGIN IMMEDIATE`
/// transaction (which also keeps other processes out while it runs).
#[cfg(feature = "sqlite")]
pub(crate) async fn migrate_sqlite(
    conn: &mut sqlx::SqliteConnection,
    component: &'static str,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    use sqlx::Connection as _;
    let e = |e| store_error(MIGRATING, e);
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(e)?;
    let sql = RunnerSql {
        create: include_str!("sqlite/migrations_table.sql"),
        current: include_str!("sqlite/migrations_current.sql"),
        record: include_str!("sqlite/migrations_record.sql"),
    };
    apply_missing::<sqlx::Sqlite>(&mut tx, component, migrations, &sql).await?;
    tx.commit().await.map_err(e)
}

const MIGRATING: &str = "running migrations";

/// The migration runner's statements in one database's dialect.
struct RunnerSql {
    /// Creates `sessionkit_migrations` if missing.
    create: &'static str,
    /// The highest version applied for a component (`$1`).
    current: &'static str,
    /// Records one migration: component, version, name, applied at.
    record: &'static str,
}

/// Inside `tx`, which holds the database's migration lock: applies the migrations of
/// `component` newer than the highest one recorded, and records each.
async fn apply_missing<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    component: &'static str,
    migrations: &[Migration],
    sql: &RunnerSql,
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (Option<i64>,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let e = |e| store_error(MIGRATING, e);
    sqlx::query(sql.create)
        .execute(&mut **tx)
        .await
        .map_err(e)?;
    let current: Option<i64> = sqlx::query_scalar(sql.current)
        .bind(component.to_owned())
        .fetch_one(&mut **tx)
        .await
        .map_err(e)?;
    let current = current.unwrap_or(0);
    warn_if_newer(component, current, migrations);
    for m in migrations.iter().filter(|m| m.version > current) {
        // A statement may be a whole `.sql` file of several, run in order.
        for s in m.statements {
            sqlx::raw_sql(s).execute(&mut **tx).await.map_err(e)?;
        }
        sqlx::query(sql.record)
            .bind(component.to_owned())
            .bind(m.version)
            .bind(m.name.to_owned())
            .bind(now_millis())
            .execute(&mut **tx)
            .await
            .map_err(e)?;
        tracing::info!(
            component,
            version = m.version,
            name = m.name,
            "applied migration"
        );
    }
    Ok(())
}

fn warn_if_newer(component: &str, current: i64, migrations: &[Migration]) {
    let known = migrations.last().map_or(0, |m| m.version);
    if current > known {
        // A newer release migrated this database (a rolling upgrade, or a rollback). Migrations
        // only add, so carry on, but say so.
        tracing::warn!(
            component,
            database = current,
            known,
            "database schema is newer than this build of sessionkit"
        );
    }
}
