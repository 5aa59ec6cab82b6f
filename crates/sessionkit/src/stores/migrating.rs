//! `MigratingStore`: a gradual move from an old store to a new primary (`SESSION_MIGRATE_FROM`).
//! New sessions go to the primary; a session the primary does not hold is looked up in the old
//! store and, when it is live there, moved: created in the primary with its expiry and user,
//! then removed from the old store. Sessions created before the switch keep working until they
//! expire, and the old store empties as their users come back (or `sessionkit migrate` copies
//! the rest at once).
//!
//! # Guarantees
//! - **A move keeps the session as it was**: the record is created in the primary as loaded
//!   (data, expiries, `user_id`, so the primary's user index gets it), create-if-absent, so two
//!   moves of one session leave one copy.
//! - **Ended stays ended.** A move creates the copy first and removes the original second; a
//!   destroy removes the original first and the copy second. A move whose removal of the
//!   original finds nothing (a destroy, or the old store's cleanup, got there first) removes its
//!   copy and reports no session, so no interleaving leaves a destroyed session in either store.
//!   `destroy_user` ("sign out everywhere") ends the user's sessions in both stores, old first.
//! - **One end per session** (what rotation relies on): within a process, the move of a key and
//!   the destroys of that key take turns (a striped lock), so a destroy never meets a copy whose
//!   move is still undecided and exactly one destroy reports `true`.
//! - **Both stores count**: `list_user`, `count`, `scan` and `cleanup_expired` cover both.
//!
//! # Limits
//! Across processes the turns are not shared: when a destroy in one process overtakes a move of
//! the same session in another, the copy may be served for the time of that move's last two
//! calls before the move removes it, and a second destroy of the session in that window may
//! also report `true`. The per-user limit counts the primary's sessions only (an old session
//! joins the count when it moves). A session in both stores for the time of a move is counted
//! and scanned twice. The old store must stay reachable during the migration: a lookup that
//! misses the primary fails when it does not answer.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::id::StorageKey;
use crate::record::{Delta, Meta, Record, Timestamp, Touch};
use crate::store::{
    CreateOutcome, Health, SaveOutcome, ScanPage, SessionLimit, SessionStore, StoreError,
};

/// Turns per key (striped): enough that unrelated sessions rarely wait on each other.
const STRIPES: usize = 256;

/// The primary store in front, the old one behind it until it empties. See the module
/// documentation.
pub struct MigratingStore {
    primary: Arc<dyn SessionStore>,
    old: Arc<dyn SessionStore>,
    turns: Vec<Mutex<()>>,
}

impl std::fmt::Debug for MigratingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigratingStore")
            .field("primary", &self.primary)
            .field("old", &self.old)
            .finish_non_exhaustive()
    }
}

impl MigratingStore {
    /// Serves from `primary`, moving sessions it lacks from `old` on first use.
    pub fn new(primary: Arc<dyn SessionStore>, old: Arc<dyn SessionStore>) -> Self {
        Self {
            primary,
            old,
            turns: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// The store sessions move to.
    pub fn primary(&self) -> &Arc<dyn SessionStore> {
        &self.primary
    }

    /// The store sessions move from.
    pub fn old(&self) -> &Arc<dyn SessionStore> {
        &self.old
    }

    fn turn(&self, key: &StorageKey) -> &Mutex<()> {
        &self.turns[key.stripe(STRIPES)]
    }

    /// The session under `key` from the primary, else moved from the old store; `None` when
    /// neither holds it live.
    async fn load_or_move(
        &self,
        key: &StorageKey,
        now: Timestamp,
    ) -> Result<Option<Record>, StoreError> {
        if let Some(r) = self.primary.load(key, now).await? {
            return Ok(Some(r));
        }
        let _turn = self.turn(key).lock().await;
        // Moved by another request of this process while this one waited.
        if let Some(r) = self.primary.load(key, now).await? {
            return Ok(Some(r));
        }
        let Some(record) = self.old.load(key, now).await? else {
            return Ok(None);
        };
        match self
            .primary
            .create(key, &record, SessionLimit::UNLIMITED, now)
            .await?
        {
            CreateOutcome::Created { .. } => {
                if self.old.destroy(key).await? {
                    tracing::debug!(key = %key.short(), "session moved from the old store");
                    return Ok(Some(record));
                }
                // The original went while this copy was made: a destroy (or the old store's
                // cleanup) ended the session, so the copy must not outlive it.
                self.primary.destroy(key).await?;
                Ok(None)
            }
            // Moved by another process meanwhile: the primary's copy is the session.
            CreateOutcome::Exists | CreateOutcome::LimitReached => {
                self.primary.load(key, now).await
            }
        }
    }
}

#[async_trait]
impl crate::store::StoreWrapper for MigratingStore {
    type Inner = dyn SessionStore;

    fn inner(&self) -> &Self::Inner {
        &*self.primary
    }

    fn name(&self) -> &'static str {
        "migrating"
    }

    async fn load(&self, key: &StorageKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.load_or_move(key, now).await
    }

    async fn save_delta(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        match self.primary.save_delta(key, delta, now).await? {
            SaveOutcome::Missing if self.load_or_move(key, now).await?.is_some() => {
                self.primary.save_delta(key, delta, now).await
            }
            other => Ok(other),
        }
    }

    async fn touch(
        &self,
        key: &StorageKey,
        touch: Touch,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        match self.primary.touch(key, touch, now).await? {
            SaveOutcome::Missing if self.load_or_move(key, now).await?.is_some() => {
                self.primary.touch(key, touch, now).await
            }
            other => Ok(other),
        }
    }

    async fn destroy(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let _turn = self.turn(key).lock().await;
        let in_old = self.old.destroy(key).await?;
        let in_primary = self.primary.destroy(key).await?;
        Ok(in_old || in_primary)
    }

    async fn list_user(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        let mut all = self.primary.list_user(user_id, now).await?;
        for (key, meta) in self.old.list_user(user_id, now).await? {
            if !all.iter().any(|(k, _)| *k == key) {
                all.push((key, meta));
            }
        }
        Ok(all)
    }

    async fn destroy_user(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        let mut ended = self.old.destroy_user(user_id, except).await?;
        for key in self.primary.destroy_user(user_id, except).await? {
            if !ended.contains(&key) {
                ended.push(key);
            }
        }
        Ok(ended)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.primary.count().await? + self.old.count().await?)
    }

    async fn cleanup_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        Ok(self.primary.cleanup_expired(now).await? + self.old.cleanup_expired(now).await?)
    }

    /// The primary's pages, then the old store's; the cursor says which (`p:` or `o:`).
    async fn scan(&self, cursor: Option<String>, batch: usize) -> Result<ScanPage, StoreError> {
        let (in_old, inner) = match cursor.as_deref() {
            None => (false, None),
            Some(c) => match (c.strip_prefix("p:"), c.strip_prefix("o:")) {
                (Some(p), _) => (false, Some(p.to_owned())),
                (_, Some(o)) => (true, Some(o.to_owned()).filter(|o| !o.is_empty())),
                _ => {
                    return Err(StoreError::backend(
                        "scanning the migrating store",
                        format!("cursor {c:?} is not one this store returned"),
                    ))
                }
            },
        };
        if in_old {
            let page = self.old.scan(inner, batch).await?;
            return Ok(ScanPage {
                records: page.records,
                next: page.next.map(|n| format!("o:{n}")),
            });
        }
        let page = self.primary.scan(inner, batch).await?;
        // The primary's end is the old store's beginning.
        let next = Some(
            page.next
                .map_or_else(|| "o:".to_owned(), |n| format!("p:{n}")),
        );
        Ok(ScanPage {
            records: page.records,
            next,
        })
    }

    async fn health(&self) -> Health {
        let (p, o) = tokio::join!(self.primary.health(), self.old.health());
        Health {
            ok: p.ok && o.ok,
            detail: format!(
                "primary {} ({}); migrating from {} ({})",
                self.primary.name(),
                p.detail,
                self.old.name(),
                o.detail
            ),
        }
    }
}
