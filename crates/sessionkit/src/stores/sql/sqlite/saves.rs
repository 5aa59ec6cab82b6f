//! SQLite saves: every delta waiting when the writer comes free, applied by one statement.
//!
//! Guarantees: deltas to one session apply in the order they arrived, each to the latest row
//! (SQLite takes the write lock before the statement reads), so none is lost; a destroyed or
//! expired session is never written back (`expires_at > now` in the `WHERE`); the size cap is
//! part of the same `WHERE`, so concurrent deltas cannot together grow a record past it; a
//! batch is one commit.

use std::sync::Arc;

use sqlx::sqlite::SqliteConnection;
use sqlx::Connection as _;

use super::writer::{Change, Writer};
use crate::id::StorageKey;
use crate::record::Delta;
use crate::store::{SaveOutcome, StoreError};
use crate::stores::sql::queue::{Queue, Queued};
use crate::stores::sql::rows::NetChanges;
use crate::stores::sql::{from_db, replicate, to_db};

/// A `save_delta` waiting for the writer.
pub(super) struct SaveRequest {
    pub(super) key: StorageKey,
    pub(super) delta: Delta,
    pub(super) now: i64,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<Option<i64>, StoreError>>,
}

/// Most deltas applied by one statement.
const SAVE_BATCH: usize = 256;

/// Every delta waiting when the writer comes free, as one `UPDATE ... FROM json_each(?)`: each
/// row of the batch is `[key, patch, last_seen_at, idle_expires_at, now]`, the patch a JSON
/// object with the keys set (to their JSON text, as strings) and the keys removed (`null`), so
/// that `json_patch` (RFC 7396 merge) applies it; any key works, no JSON path is involved. The
/// statement takes the write lock before it reads the rows, so it is atomic against every other
/// writer, in this process or another. A row whose `data` is not JSON is left alone (its
/// session reads as corrupt, and the save as missing).
///
/// The statement is `save.sql`; its touch marker is empty for the deltas without a touch
/// ([`save`]) and sets the two expiry columns for the others ([`save_touching`]). SQLite rewrites the entries of every index on a column
/// that an `UPDATE` names in its `SET`, whether or not the value changes: naming the touch
/// columns in every save rewrote, for a save of data alone (most saves: the touch is throttled),
/// three index entries of the row (`expires_at`, (user, expiry), (user, last seen)), which cost
/// more than the rest of the statement (measured with Python's `sqlite3` on 1,000 sessions of
/// one user, batches of 32: 57 µs of CPU per saved row with them, 34 without).
///
/// The sixth element of a row is the size cap, `null` for none (the client sends none for a
/// delta that sets no key, so a touch or a removal costs no measuring): a row whose merged data
/// would be over the cap and larger than before is left alone, and [`REFUSED`] tells it from a
/// missing session. Size is measured as `Record::data_size` counts it: per value, the bytes of
/// its key and of its JSON text (`json_each` yields the string unescaped) plus 4; first against
/// a cheap upper bound, the length of the merged JSON text (each value takes at least that
/// much there, with its quotes and separators), and exactly only when the bound is over the cap
/// (measured with Python's `sqlite3` on a 10-value record: about 10 µs a save instead of 35;
/// with the bound, the cap costs no measurable time on the load scenario's saves).
const SAVE: &str = include_str!("save.sql");

/// The deltas of a batch without a touch: data and version only.
fn save() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| SAVE.replace("/*touch*/", ""))
}

/// The deltas of a batch with a touch: the expiry moves too.
fn save_touching() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        SAVE.replace(
            "/*touch*/",
            "last_seen_at = max(last_seen_at, d.seen), \
             idle_expires_at = max(idle_expires_at, d.idle), ",
        )
    })
}

/// Which of a batch's rows that the saves did not write are still live: those were refused by
/// the size cap (asked only when a capped row was not written, in the same writer turn).
const LIVE: &str = include_str!("live.sql");

/// The version reported for a save refused by the size cap (real versions are never negative).
const REFUSED: i64 = -1;

/// The task that owns the saves: it takes every request queued while the previous batch ran
/// (one per key: a second delta to the same session waits for the next batch, so deltas to one
/// session apply in the order they arrived) and applies them with one statement, one commit.
/// Under load the writer's cost per save shrinks with the batch; alone, a save is one statement
/// as before.
pub(super) async fn run_saves(writer: Arc<Writer>, mut queue: Queue<SaveRequest>) {
    while let Some(batch) = queue.next(SAVE_BATCH, true).await {
        writer.save_batch(batch).await;
    }
}

impl Queued for SaveRequest {
    fn key(&self) -> &StorageKey {
        &self.key
    }
}

impl Writer {
    async fn save_batch(&self, batch: Vec<SaveRequest>) {
        let row = |r: &SaveRequest| {
            let net = NetChanges::of(&r.delta);
            let mut patch = net.set_map();
            for k in &net.removed {
                patch.insert(k.clone(), serde_json::Value::Null);
            }
            let (seen, idle) = r.delta.touch.map_or((0, 0), |t| {
                (to_db(t.last_seen_at.0), to_db(t.idle_expires_at.0))
            });
            let cap = capped(&r.delta, &net);
            serde_json::json!([
                r.key.as_str(),
                serde_json::Value::Object(patch).to_string(),
                seen,
                idle,
                r.now,
                cap
            ])
        };
        // The statement that leaves the expiry columns (and their indexes) alone for the saves
        // without a touch, the other for the rest; see `SAVE`.
        let (touching, plain): (Vec<&SaveRequest>, Vec<&SaveRequest>) =
            batch.iter().partition(|r| r.delta.touch.is_some());
        let rows = |of: &[&SaveRequest]| {
            serde_json::Value::Array(of.iter().map(|r| row(r)).collect()).to_string()
        };
        let result = async {
            let mut w = self.lock().await?;
            let mut saved = std::collections::HashMap::with_capacity(batch.len());
            if touching.is_empty() || plain.is_empty() {
                let (sql, of) = if plain.is_empty() {
                    (save_touching(), &touching)
                } else {
                    (save(), &plain)
                };
                apply(&mut w, sql, rows(of), &mut saved).await?;
            } else {
                // Both in one transaction: one commit per batch, as with one statement (and
                // the load cache sees the single commit it expects of a write).
                let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
                apply(&mut tx, save(), rows(&plain), &mut saved).await?;
                apply(&mut tx, save_touching(), rows(&touching), &mut saved).await?;
                tx.commit().await?;
            }
            let unwritten: Vec<serde_json::Value> = batch
                .iter()
                .filter(|r| {
                    !saved.contains_key(r.key.as_str())
                        && capped(&r.delta, &NetChanges::of(&r.delta)).is_some()
                })
                .map(|r| serde_json::json!([r.key.as_str(), r.now]))
                .collect();
            if !unwritten.is_empty() {
                let live: Vec<String> = sqlx::query_scalar(LIVE)
                    .bind(serde_json::Value::Array(unwritten).to_string())
                    .fetch_all(&mut *w)
                    .await?;
                saved.extend(live.into_iter().map(|k| (k, REFUSED)));
            }
            w.changed(Change::Patched(
                batch
                    .iter()
                    .map(|r| {
                        let v = saved.get(r.key.as_str()).copied();
                        (r.key.clone(), r.delta.clone(), v)
                    })
                    .collect(),
            ));
            Ok::<_, sqlx::Error>(saved)
        }
        .await;
        match result {
            Ok(saved) => {
                for r in batch {
                    let _ = r.reply.send(Ok(saved.get(r.key.as_str()).copied()));
                }
            }
            Err(e) => {
                let e = self.error("saving a session", e);
                for r in batch {
                    let _ = r.reply.send(Err(replicate(&e)));
                }
            }
        }
    }
}

/// Runs one of the batch statements ([`save`], [`save_touching`]) on `rows`, noting the
/// version of each session it wrote.
async fn apply(
    c: &mut SqliteConnection,
    sql: &'static str,
    rows: String,
    saved: &mut std::collections::HashMap<String, i64>,
) -> Result<(), sqlx::Error> {
    let written: Vec<(String, i64)> = sqlx::query_as(sql).bind(rows).fetch_all(c).await?;
    saved.extend(written);
    Ok(())
}

/// The size cap to check a delta against: none when it sets no key (it cannot grow the data).
fn capped(delta: &Delta, net: &NetChanges) -> Option<usize> {
    delta.max_size.filter(|_| !net.set.is_empty())
}

pub(super) fn saved(version: Option<i64>) -> SaveOutcome {
    match version {
        Some(REFUSED) => SaveOutcome::TooLarge,
        Some(v) => SaveOutcome::Saved {
            version: from_db(v),
        },
        None => SaveOutcome::Missing,
    }
}
