//! The keys a [`RedisStore`] writes, and how a user ID becomes part of one.
//!
//! With `<p>` the key prefix (`SESSION_KEY_PREFIX`, default `sk:`) and `<k>` the storage key:
//! - `<p>s:<k>`, the *head*, a hash. Every session has exactly one head, so `count`, `scan` and
//!   `cleanup_expired` walk heads. For an anonymous session it is the record itself. For a
//!   signed-in session:
//!   - standalone: the head is the record too, with one more field `u` = the user's tag, so
//!     that `load` is one plain `HGETALL` (no script; about a sixth of a script's server time);
//!   - Cluster: the head is a pointer, field `p` = the user's tag, and the record lives with
//!     its user (next item), in the user's slot.
//! - `<p>{u:<user>}:i`, the user's index (the user ID with `%`, `{` and `}` percent-escaped, so
//!   that no user ID can end the hash tag early or collide with another): a sorted set of
//!   storage keys scored by each record's nearest expiry (ms); and, on a Cluster,
//!   `<p>{u:<user>}:s:<k>`, the record of a session of `<user>`. The hash tag `{u:<user>}` puts
//!   a user's records and index in one Cluster slot, so the per-user limit and its evictions
//!   run in one script even on a Cluster. The pointer is what lets `load` find that record from
//!   the storage key alone. Standalone scripts reach records from the index by computed key
//!   names, which a standalone server allows.
//! - `<p>{u:<user>}:c` and `<p>{u:<user>}:l`, the same members as the index scored by creation
//!   and by last sight (ms), in the user's slot too: the orders in which `evict_oldest` and
//!   `evict_idlest` pick victims (see "User index" below).
//! - Standalone sessions written by earlier versions (a pointer at the head, the record next to
//!   the index) are still read, written, listed and destroyed: `load` follows a pointer it
//!   finds, and the scripts look for a member's record in both places.
//! - A record hash holds `v` (version), `c`, `s`, `i`, `a` (created, last seen, idle and
//!   absolute expiry, ms), `m` (user, user agent, IP, auth time; MessagePack), `z` (the data
//!   size as the size cap counts it, kept up to date by the save scripts, which refuse a delta
//!   that would take it over the cap) and one field `d:<name>` per session value (its JSON
//!   text), so a delta touches only the fields it changes.
//! - A load refuses (as corrupt) a record over `DECODE_CEILING` before decoding it. The reply
//!   itself is read first: checking `z` beforehand would cost a script or a second round trip
//!   on every load, and only a client with write access to Redis can plant such a record, since
//!   the scripts keep every record the library writes under the cap.
//! - Each record's TTL (`PEXPIREAT`) is its nearest expiry and moves with every touch, as does
//!   its index score; a pointer's TTL is the absolute expiry; an index's TTL is that of its
//!   longest-lived entry. TTLs only reclaim memory: expiry is always judged by the `now` the
//!   caller passes.

/// The parts of key names, written once: the scripts get the same from the header
/// `scripts.rs` generates. With `<p>` the prefix, `<t>` a user tag and `<k>` a storage key:
/// `<p>` SESSION `<k>` (head), `<p>` TAG_OPEN `<t>` TAG_CLOSE then SESSION `<k>` (a user's
/// record) or INDEX, BY_CREATION, BY_SIGHT (the user's index and its two orders, which end like
/// the index but for its last part).
pub(super) mod part {
    pub(crate) const SESSION: &str = "s:";
    pub(crate) const TAG_OPEN: &str = "{u:";
    pub(crate) const TAG_CLOSE: &str = "}:";
    pub(crate) const INDEX: &str = "i";
    pub(crate) const BY_CREATION: &str = "c";
    pub(crate) const BY_SIGHT: &str = "l";
}

use self::part::{INDEX, SESSION, TAG_CLOSE, TAG_OPEN};
use super::RedisStore;
use crate::id::StorageKey;

/// Percent-escapes the characters that would break a hash tag (and `%` itself), so distinct
/// users always get distinct keys.
pub(super) fn user_tag(user: &str) -> String {
    let mut s = String::with_capacity(user.len());
    for c in user.chars() {
        match c {
            '%' => s.push_str("%25"),
            '{' => s.push_str("%7B"),
            '}' => s.push_str("%7D"),
            c => s.push(c),
        }
    }
    s
}

/// Escapes `SCAN MATCH` glob characters.
pub(super) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisStore {
    pub(super) fn head_key(&self, key: &str) -> String {
        format!("{}{SESSION}{key}", self.prefix)
    }

    pub(super) fn user_record_key(&self, tag: &str, key: &str) -> String {
        format!("{}{TAG_OPEN}{tag}{TAG_CLOSE}{SESSION}{key}", self.prefix)
    }

    pub(super) fn user_index_key(&self, tag: &str) -> String {
        format!("{}{TAG_OPEN}{tag}{TAG_CLOSE}{INDEX}", self.prefix)
    }

    pub(super) fn head_pattern(&self) -> String {
        format!("{}{SESSION}*", glob_escape(&self.prefix))
    }

    /// The storage key of a head key found by `SCAN` (foreign keys are skipped).
    pub(super) fn key_of_head(&self, head: &str) -> Option<StorageKey> {
        head.strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix(SESSION))
            .and_then(StorageKey::parse)
    }
}
