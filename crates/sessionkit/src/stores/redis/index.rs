//! `create` with the per-user limit, and the user's index: `list_user`, `destroy_user`.
//!
//! No per-request operation walks a user's index, whose size an attacker who can sign in
//! controls (sessions per user are unlimited by default): a login removes at most a bounded
//! batch of expired entries (`ZRANGEBYSCORE -inf now LIMIT`), counts the live ones with one
//! `ZCOUNT` over the scores, and evicts the first members of the `:c` or `:l` order, each step
//! O(log n). Expiry scores cannot serve as either order (the nearest expiry is neither the
//! creation nor the last sight), hence the two extra sorted sets: `create` adds to them,
//! every removal takes from all three, and a touch moves the member's `:l` score. When an
//! eviction is due while more expired entries remain than one batch, the script prunes a larger
//! batch and answers `again`, and the client calls it once more: every expired entry goes
//! once, so the cost is amortised O(log n) per login and Redis is never blocked for long.
//! Users indexed by an earlier version (no orders yet) get them rebuilt once, at their first
//! eviction. `list_user` and `destroy_user` (account pages and admin actions, not per request)
//! read the whole index.

use super::codec::{array, bytes, capped, encode_fields, meta_from, strings, text};
use super::keys::user_tag;
use super::scripts::{unexpected, Call, Reply};
use super::RedisStore;
use crate::id::StorageKey;
use crate::record::{Meta, Record, Timestamp};
use crate::store::{CreateOutcome, LimitPolicy, SessionLimit, StoreError};

/// Expired index entries a login removes before counting (bounded work per login).
pub(super) const PRUNE_BATCH: usize = 32;
/// Expired entries removed per call while an eviction waits for them (the script then answers
/// `again` and the client calls once more).
pub(super) const PRUNE_CATCH_UP: usize = 512;
/// Most sessions one login evicts: a limit lowered far below the count is reached over several.
pub(super) const MAX_EVICTIONS: usize = 64;

pub(super) fn policy_arg(p: LimitPolicy) -> &'static str {
    match p {
        LimitPolicy::Deny => "deny",
        LimitPolicy::EvictOldest => "oldest",
        LimitPolicy::EvictIdlest => "idlest",
    }
}

impl RedisStore {
    pub(super) async fn create_session(
        &self,
        key: &StorageKey,
        record: &Record,
        limit: SessionLimit,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        const CTX: &str = "creating a session in Redis";
        self.bounded(CTX, async {
            let k = key.as_str();
            let head = self.head_key(k);
            let exp = capped(record.meta.expires_at());
            let abs = capped(record.meta.absolute_expires_at);
            let max = limit.max.map(|m| m.to_string()).unwrap_or_default();
            let fields = encode_fields(record);
            let tag = record.meta.user_id.as_deref().map(user_tag);
            let args = |kind: &'static str| -> Vec<&[u8]> {
                let mut a: Vec<&[u8]> = vec![
                    kind.as_bytes(),
                    tag.as_deref().unwrap_or("").as_bytes(),
                    max.as_bytes(),
                    policy_arg(limit.policy).as_bytes(),
                    exp.as_bytes(),
                    abs.as_bytes(),
                ];
                a.extend(fields.iter().map(Vec::as_slice));
                a
            };
            let reply = match (&tag, self.cluster) {
                (None, _) => self.create_head(&head, k, now, &args("anon")).await?,
                (Some(t), false) => {
                    let (rec, idx) = (self.user_record_key(t, k), self.user_index_key(t));
                    let keys = [head.as_str(), &rec, &idx];
                    let call = || Call {
                        script: &self.scripts.create,
                        keys: &keys,
                        mode: "f",
                        key: k,
                        now,
                    };
                    self.run_pruning(CTX, call, &args("user")).await?
                }
                (Some(t), true) => {
                    // Step 1 on the head's slot: claim the key (create-if-absent).
                    let claim = self.create_head(&head, k, now, &args("ptr")).await?;
                    if claim.tag() != "created" {
                        return match claim.tag() {
                            "exists" => Ok(CreateOutcome::Exists),
                            _ => Err(unexpected(CTX, &claim.0)),
                        };
                    }
                    // Step 2 on the user's slot: limit, evictions and the record, atomically.
                    let (rec, idx) = (self.user_record_key(t, k), self.user_index_key(t));
                    let keys = [rec.as_str(), &idx];
                    let call = || Call {
                        script: &self.scripts.create,
                        keys: &keys,
                        mode: "r",
                        key: k,
                        now,
                    };
                    let reply = self.run_pruning(CTX, call, &args("user")).await?;
                    if reply.tag() == "limit" {
                        self.drop_heads(&[k.to_owned()]).await;
                    }
                    reply
                }
            };
            match reply.tag() {
                "exists" => Ok(CreateOutcome::Exists),
                "limit" => Ok(CreateOutcome::LimitReached),
                "created" => {
                    let victims = strings(reply.get(1));
                    self.drop_heads(&victims).await;
                    let mut evicted: Vec<StorageKey> = victims
                        .iter()
                        .filter_map(|v| StorageKey::parse(v))
                        .collect();
                    evicted.sort();
                    Ok(CreateOutcome::Created { evicted })
                }
                _ => Err(unexpected(CTX, &reply.0)),
            }
        })
        .await
    }

    /// The head step of `create` (kind `anon`, or `ptr` on a Cluster). On a Cluster, a pointer
    /// in the way whose record is dead at `now` (expired or gone) is cleared and the claim tried
    /// once more, so that create replaces a dead session as on a standalone server.
    pub(super) async fn create_head(
        &self,
        head: &str,
        k: &str,
        now: Timestamp,
        args: &[&[u8]],
    ) -> Result<Reply, StoreError> {
        const CTX: &str = "creating a session in Redis";
        let keys = [head];
        let call = || Call {
            script: &self.scripts.create,
            keys: &keys,
            mode: self.mode(),
            key: k,
            now,
        };
        let reply = self.run(CTX, call(), args).await?;
        let stale = match (reply.tag(), reply.get(1).and_then(text)) {
            ("exists", Some(tag)) if !tag.is_empty() => tag.to_owned(),
            _ => return Ok(reply),
        };
        let (rec, idx) = (self.user_record_key(&stale, k), self.user_index_key(&stale));
        let sweep = Call {
            script: &self.scripts.destroy,
            keys: &[&rec, &idx],
            mode: "r",
            key: k,
            now,
        };
        if self.run(CTX, sweep, &[b"sweep"]).await?.tag() != "done" {
            return Ok(reply);
        }
        self.drop_heads(&[k.to_owned()]).await;
        self.run(CTX, call(), args).await
    }

    /// Runs the `create` script of a signed-in session until it decides: it answers `again`
    /// when the user's limit must evict but more expired index entries remain than it prunes
    /// in one call (each call removes a bounded batch, so Redis is never blocked for long; the
    /// decision itself is one script, so the limit stays atomic).
    pub(super) async fn run_pruning<'a>(
        &'a self,
        context: &'static str,
        call: impl Fn() -> Call<'a>,
        args: &[&[u8]],
    ) -> Result<Reply, StoreError> {
        loop {
            let reply = self.run(context, call(), args).await?;
            if reply.tag() != "again" {
                return Ok(reply);
            }
        }
    }

    pub(super) async fn list_user_sessions(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Vec<(StorageKey, Meta)>, StoreError> {
        const CTX: &str = "listing a user's sessions in Redis";
        self.bounded(CTX, async {
            let tag = user_tag(user_id);
            let idx = self.user_index_key(&tag);
            let reply = self
                .run(CTX, Call { script: &self.scripts.list, keys: &[&idx], mode: self.mode(), key: "", now }, &[tag.as_bytes()])
                .await?;
            if reply.tag() != "list" {
                return Err(unexpected(CTX, &reply.0));
            }
            let mut out = Vec::new();
            for e in reply.get(1).and_then(array).unwrap_or_default() {
                let Some(f) = array(e) else { continue };
                let get = |i: usize| f.get(i).and_then(bytes);
                let Some(key) = f.first().and_then(text).and_then(StorageKey::parse) else {
                    continue;
                };
                // Fields: member, i, a, v, c, s, m. An unreadable record is skipped.
                match meta_from(get(3), get(4), get(5), get(1), get(2), get(6)) {
                    Ok(meta) => out.push((key, meta)),
                    Err(e) => tracing::warn!(key = key.short(), error = %e, "redis: skipping an unreadable session record"),
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            self.drop_heads(&strings(reply.get(2))).await;
            Ok(out)
        })
        .await
    }

    pub(super) async fn destroy_user_sessions(
        &self,
        user_id: &str,
        except: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, StoreError> {
        const CTX: &str = "destroying a user's sessions in Redis";
        self.bounded(CTX, async {
            let tag = user_tag(user_id);
            let idx = self.user_index_key(&tag);
            let except = except.map(StorageKey::as_str).unwrap_or("");
            let reply = self
                .run(
                    CTX,
                    Call {
                        script: &self.scripts.destroy_user,
                        keys: &[&idx],
                        mode: self.mode(),
                        key: "",
                        now: Timestamp(0),
                    },
                    &[tag.as_bytes(), except.as_bytes()],
                )
                .await?;
            if reply.tag() != "done" {
                return Err(unexpected(CTX, &reply.0));
            }
            self.drop_heads(&strings(reply.get(2))).await;
            let mut gone: Vec<StorageKey> = strings(reply.get(1))
                .iter()
                .filter_map(|k| StorageKey::parse(k))
                .collect();
            gone.sort();
            Ok(gone)
        })
        .await
    }
}
