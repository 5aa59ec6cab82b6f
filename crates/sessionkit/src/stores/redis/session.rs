//! Per-session operations of a [`RedisStore`]: load, save, destroy.
//!
//! Standalone: `load` is one `HGETALL` (a single command, so it sees a record before or after
//! any script, never in between); `save_delta` is one lean script on a live record only;
//! `destroy` removes record, index entry and head in one script. On a Cluster a signed-in
//! session takes two steps (head, then the user's slot), see the store's documentation.

use super::codec::{bytes, decode_fields, field, int};
use super::connection::Invalid;
use super::scripts::{unexpected, Call};
use super::RedisStore;
use crate::id::StorageKey;
use crate::record::{Delta, Record, Timestamp, Value};
use crate::store::{SaveOutcome, StoreError};

impl RedisStore {
    pub(super) async fn load_inner(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        const CTX: &str = "loading a session from Redis";
        if let Some(batch) = &self.batch {
            // Standalone: the record is the head, one plain `HGETALL` (no script).
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(self.head_key(key.as_str()));
            let v = self.timed(CTX, batch.query(cmd)).await?;
            let flat = match v {
                redis::Value::Array(a) => a,
                redis::Value::Map(m) => m.into_iter().flat_map(|(f, v)| [f, v]).collect(),
                redis::Value::Nil => Vec::new(),
                _ => {
                    return Err(StoreError::backend(
                        CTX,
                        Invalid("HGETALL reply is not an array".into()),
                    ))
                }
            };
            if flat.is_empty() {
                return Ok(None);
            }
            // A pointer left by the earlier layout (record next to the user's index): follow it.
            let pointer = flat
                .chunks(2)
                .any(|p| p.first().and_then(bytes) == Some(field::POINTER.as_bytes()));
            if !pointer {
                return decode_fields(&flat).map(Some).map_err(StoreError::Corrupt);
            }
        }
        let (reply, _) = self
            .run_on_session(
                "loading a session from Redis",
                &self.scripts.load,
                key,
                Timestamp(0),
                &[],
            )
            .await?;
        match reply.tag() {
            "none" => Ok(None),
            "rec" => decode_fields(&reply.0[1..])
                .map(Some)
                .map_err(StoreError::Corrupt),
            _ => Err(unexpected("loading a session from Redis", &reply.0)),
        }
    }

    pub(super) async fn load_session(
        &self,
        key: &StorageKey,
        now: Timestamp,
    ) -> Result<Option<Record>, StoreError> {
        let rec = self
            .bounded("loading a session from Redis", self.load_inner(key))
            .await?;
        Ok(rec.filter(|r| !r.meta.is_expired(now)))
    }

    pub(super) async fn save_session(
        &self,
        key: &StorageKey,
        delta: &Delta,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        const CTX: &str = "saving a session to Redis";
        self.bounded(CTX, async {
            let (seen, idle) = match delta.touch {
                Some(t) => (
                    t.last_seen_at.0.to_string(),
                    t.idle_expires_at.0.to_string(),
                ),
                None => (String::new(), String::new()),
            };
            // The changes reduced to the last per name: the set fields with their values, then
            // the removed ones (see `lua::SAVE`).
            let (set, removed) = delta.net();
            let field = |name: &str| [field::DATA.as_bytes(), name.as_bytes()].concat();
            let set: Vec<(Vec<u8>, &Value)> = set.into_iter().map(|(k, v)| (field(k), v)).collect();
            let removed: Vec<Vec<u8>> = removed.into_iter().map(field).collect();
            let n = set.len().to_string();
            let cap = delta.max_size.map(|c| c.to_string()).unwrap_or_default();
            let mut args: Vec<&[u8]> = Vec::with_capacity(5 + 2 * set.len() + removed.len());
            args.extend([
                if delta.touch.is_some() { b"1" } else { b"0" },
                seen.as_bytes(),
                idle.as_bytes(),
                n.as_bytes(),
                cap.as_bytes(),
            ]);
            for (f, v) in &set {
                args.extend([f.as_slice(), v.as_json().as_bytes()]);
            }
            args.extend(removed.iter().map(Vec::as_slice));
            // Standalone: the lean script for a head that is the record; a pointer of an earlier
            // layout, and a Cluster, take the general one.
            let mut reply = None;
            if self.batch.is_some() {
                let head = self.head_key(key.as_str());
                let call = Call {
                    script: &self.scripts.save_head,
                    keys: &[&head],
                    mode: "f",
                    key: key.as_str(),
                    now,
                };
                reply = Some(self.run(CTX, call, &args).await?).filter(|r| r.tag() != "pointer");
            }
            let reply = match reply {
                Some(reply) => reply,
                None => {
                    self.run_on_session(CTX, &self.scripts.save, key, now, &args)
                        .await?
                        .0
                }
            };
            match reply.tag() {
                "missing" => Ok(SaveOutcome::Missing),
                "too_large" => Ok(SaveOutcome::TooLarge),
                "saved" => {
                    let version = reply
                        .get(1)
                        .and_then(int)
                        .and_then(|v| u64::try_from(v).ok())
                        .ok_or_else(|| unexpected(CTX, &reply.0))?;
                    Ok(SaveOutcome::Saved { version })
                }
                _ => Err(unexpected(CTX, &reply.0)),
            }
        })
        .await
    }

    pub(super) async fn destroy_session(&self, key: &StorageKey) -> Result<bool, StoreError> {
        const CTX: &str = "destroying a session in Redis";
        self.bounded(CTX, async {
            let (reply, tag) = self
                .run_on_session(CTX, &self.scripts.destroy, key, Timestamp(0), &[b"destroy"])
                .await?;
            if reply.tag() != "done" {
                return Err(unexpected(CTX, &reply.0));
            }
            if tag.is_some() {
                // Cluster: the record is gone; now its pointer.
                self.drop_heads(&[key.as_str().to_owned()]).await;
            }
            Ok(reply.get(1).and_then(int) == Some(1))
        })
        .await
    }

    /// Deletes heads left behind on a Cluster (best effort: a head that stays is a harmless
    /// dangling pointer that `cleanup_expired` or its TTL removes).
    pub(super) async fn drop_heads(&self, keys: &[String]) {
        if !self.cluster || keys.is_empty() {
            return;
        }
        let dels = keys.iter().map(|k| {
            let mut conn = self.conn.clone();
            let head = self.head_key(k);
            async move {
                let mut cmd = redis::cmd("DEL");
                let del = cmd.arg(&head).query_async::<i64>(&mut conn);
                match tokio::time::timeout(self.op_timeout, del).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "redis: could not remove a session pointer");
                    }
                    Err(_) => tracing::debug!("redis: removing a session pointer timed out"),
                }
            }
        });
        futures_util::future::join_all(dels).await;
    }
}
