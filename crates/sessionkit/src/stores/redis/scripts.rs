//! The server-side Lua scripts (in `lua/`, one per operation) and how they are called.
//!
//! All writes are scripts ([`redis::Script`]: `EVALSHA`, reloaded on `NOSCRIPT`), so each step
//! is atomic on the server. The calling convention common to all of them is described at the
//! top of `lua/prelude.lua`.

use redis::{Cmd, ErrorKind, Script, ServerErrorKind};

use super::codec::text;
use super::connection::Invalid;
use super::RedisStore;
use crate::id::StorageKey;
use crate::record::Timestamp;
use crate::store::StoreError;

/// The script sources, each a shared prelude and a body.
pub(super) mod lua {
    /// Largest expiry given to `PEXPIREAT` and used as an index score, in ms.
    pub(in super::super) const CAP: u64 = 4_000_000_000_000_000;

    pub(super) const PRELUDE: &str = include_str!("lua/prelude.lua");
    pub(super) const LOAD: &str = include_str!("lua/load.lua");
    pub(super) const SAVE: &str = include_str!("lua/save.lua");
    pub(super) const SAVE_HEAD: &str = include_str!("lua/save_head.lua");
    pub(super) const APPLY: &str = include_str!("lua/apply.lua");
    pub(super) const CREATE: &str = include_str!("lua/create.lua");
    pub(super) const DESTROY: &str = include_str!("lua/destroy.lua");
    pub(super) const LIST: &str = include_str!("lua/list.lua");
    pub(super) const DESTROY_USER: &str = include_str!("lua/destroy_user.lua");

    /// The full source of a script: prelude + body.
    pub(super) fn source(body: &str) -> String {
        format!("{PRELUDE}{body}")
    }
}

pub(super) struct Scripts {
    pub(super) load: Script,
    pub(super) save: Script,
    pub(super) save_head: Script,
    pub(super) create: Script,
    pub(super) destroy: Script,
    pub(super) list: Script,
    pub(super) destroy_user: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            load: Script::new(&lua::source(lua::LOAD)),
            save: Script::new(&lua::source(&format!("{}{}", lua::SAVE, lua::APPLY))),
            save_head: Script::new(&format!("{}{}", lua::SAVE_HEAD, lua::APPLY)),
            create: Script::new(&lua::source(lua::CREATE)),
            destroy: Script::new(&lua::source(lua::DESTROY)),
            list: Script::new(&lua::source(lua::LIST)),
            destroy_user: Script::new(&lua::source(lua::DESTROY_USER)),
        }
    }
}

pub(super) fn unexpected(context: &str, reply: &[redis::Value]) -> StoreError {
    let head = reply.first().and_then(text).unwrap_or("?");
    StoreError::backend(
        context,
        Invalid(format!("unexpected script reply `{head}`")),
    )
}

/// One script call: the script, its keys, the mode (see [`lua`]), the storage key (or `""`)
/// and the time.
pub(super) struct Call<'a> {
    pub(super) script: &'a Script,
    pub(super) keys: &'a [&'a str],
    pub(super) mode: &'a str,
    pub(super) key: &'a str,
    pub(super) now: Timestamp,
}

/// A script reply: its outcome tag and the rest.
pub(super) struct Reply(pub(super) Vec<redis::Value>);

impl Reply {
    pub(super) fn tag(&self) -> &str {
        self.0.first().and_then(text).unwrap_or("")
    }
    pub(super) fn get(&self, i: usize) -> Option<&redis::Value> {
        self.0.get(i)
    }
}

impl RedisStore {
    pub(super) fn mode(&self) -> &'static str {
        if self.cluster {
            "h"
        } else {
            "f"
        }
    }

    /// Runs one script call with the common arguments, then `extra`.
    pub(super) async fn run(
        &self,
        context: &'static str,
        call: Call<'_>,
        extra: &[&[u8]],
    ) -> Result<Reply, StoreError> {
        let script = call.script;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(call.keys.len());
        for k in call.keys {
            cmd.arg(*k);
        }
        cmd.arg(call.mode)
            .arg(&self.prefix)
            .arg(call.key)
            .arg(call.now.0.to_string());
        for a in extra {
            cmd.arg(*a);
        }
        // Through the pipelining batcher when there is one (standalone), else straight on the
        // connection (a Cluster connection routes by the first key).
        let send = |cmd: Cmd| async move {
            match &self.batch {
                Some(batch) => batch.query(cmd).await,
                None => {
                    cmd.query_async::<redis::Value>(&mut self.conn.clone())
                        .await
                }
            }
        };
        let eval = async {
            match send(cmd.clone()).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    script.load_async(&mut self.conn.clone()).await?;
                    send(cmd).await
                }
                r => r,
            }
        };
        let v = self.timed(context, eval).await?;
        match v {
            redis::Value::Array(a) => Ok(Reply(a)),
            other => Err(StoreError::backend(
                context,
                Invalid(format!("unexpected script reply {other:?}")),
            )),
        }
    }

    /// Runs a per-session script on the head of `key`, following a Cluster redirect to the
    /// user's slot. Returns the reply and, after a redirect, the user tag.
    pub(super) async fn run_on_session(
        &self,
        context: &'static str,
        script: &Script,
        key: &StorageKey,
        now: Timestamp,
        extra: &[&[u8]],
    ) -> Result<(Reply, Option<String>), StoreError> {
        let k = key.as_str();
        let head = self.head_key(k);
        let reply = self
            .run(
                context,
                Call {
                    script,
                    keys: &[&head],
                    mode: self.mode(),
                    key: k,
                    now,
                },
                extra,
            )
            .await?;
        if reply.tag() != "redirect" {
            return Ok((reply, None));
        }
        let tag = reply
            .get(1)
            .and_then(text)
            .ok_or_else(|| unexpected(context, &reply.0))?
            .to_owned();
        let rec = self.user_record_key(&tag, k);
        let idx = self.user_index_key(&tag);
        let reply = self
            .run(
                context,
                Call {
                    script,
                    keys: &[&rec, &idx],
                    mode: "r",
                    key: k,
                    now,
                },
                extra,
            )
            .await?;
        Ok((reply, Some(tag)))
    }
}
