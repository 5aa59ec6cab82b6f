//! Sign-in throttling: failed attempts are limited per account and per client address.
//!
//! Guarantees:
//! - An account (the submitted user name, whether it exists or not) gets at most
//!   [`LoginLimits::per_account`] failed attempts in a burst and then one more per
//!   `per / failures`; a client address the same with [`LoginLimits::per_address`] (IPv6 counted
//!   per /64, since one host usually holds a whole /64). Past that, sign-in is a 429 with
//!   `Retry-After` and no password is checked.
//! - An attempt is counted before its password is checked and refunded only when it succeeds, so
//!   a burst of concurrent guesses cannot slip through between check and count.
//! - Memory is bounded: each table holds at most [`LoginLimits::max_tracked`] entries of a few
//!   dozen bytes (keys are 64-bit keyed hashes, never the submitted text). When a table is full,
//!   entries whose debt has run out go first, then the quarter with the least debt: an attacker
//!   rotating names or addresses can make the limiter forget, never grow.
//!
//! Each key keeps one instant, its "theoretical arrival time" (the generic cell rate algorithm):
//! every counted attempt pushes it `per / failures` into the future, and an attempt is refused
//! while that would put it more than `per` ahead of now.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

/// At most `failures` failed attempts per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Attempts allowed in a burst (at least 1).
    pub failures: u32,
    /// The period over which `failures` attempts are allowed.
    pub per: Duration,
}

impl Limit {
    fn interval(self) -> Duration {
        self.per / self.failures.max(1)
    }
}

/// The sign-in limits of the demo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginLimits {
    /// Per submitted user name. Default: 5 per 15 minutes.
    pub per_account: Limit,
    /// Per client address (IPv6: per /64). Default: 20 per minute.
    pub per_address: Limit,
    /// Entries kept per table before the least indebted are forgotten. Default: 10,000.
    pub max_tracked: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_account: Limit {
                failures: 5,
                per: Duration::from_secs(15 * 60),
            },
            per_address: Limit {
                failures: 20,
                per: Duration::from_secs(60),
            },
            max_tracked: 10_000,
        }
    }
}

/// The client's address, from the connection (`ConnectInfo<SocketAddr>`), if the server was
/// started with `into_make_service_with_connect_info`. Without it only accounts are throttled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientAddr(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// One table of keys and their theoretical arrival times.
#[derive(Debug)]
struct Table {
    limit: Limit,
    max: usize,
    map: Mutex<HashMap<u64, Instant>>,
}

impl Table {
    fn new(limit: Limit, max: usize) -> Self {
        Self {
            limit,
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt for `key`, or says how long to wait when the key is over its limit.
    fn take(&self, key: u64, now: Instant) -> Result<(), Duration> {
        let step = self.limit.interval();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = map.get(&key).copied().filter(|t| *t > now).unwrap_or(now);
        let ahead = tat - now + step;
        if ahead > self.limit.per {
            return Err(ahead - self.limit.per);
        }
        if map.len() >= self.max && !map.contains_key(&key) {
            make_room(&mut map, self.max, now);
        }
        map.insert(key, tat + step);
        Ok(())
    }

    /// Gives back one counted attempt (a sign-in that succeeded).
    fn refund(&self, key: u64, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = map.get_mut(&key) {
            match t.checked_sub(self.limit.interval()) {
                Some(back) if back > now => *t = back,
                _ => {
                    map.remove(&key);
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Frees at least a quarter of a full table: the entries that owe nothing first, then those
/// that owe least. Amortised O(1) per insertion, however the keys are rotated.
fn make_room(map: &mut HashMap<u64, Instant>, max: usize, now: Instant) {
    map.retain(|_, t| *t > now);
    let target = max - max / 4 - 1;
    if map.len() <= target {
        return;
    }
    let mut times: Vec<Instant> = map.values().copied().collect();
    let excess = map.len() - target;
    let (_, cut, _) = times.select_nth_unstable(excess - 1);
    let cut = *cut;
    let mut left = excess;
    map.retain(|_, t| {
        if left > 0 && *t <= cut {
            left -= 1;
            false
        } else {
            true
        }
    });
}

/// Why a sign-in was refused before its password was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    /// How long until one more attempt is allowed.
    pub retry_after: Duration,
}

/// The per-account and per-address limiter of the sign-in form. Shared by all requests.
#[derive(Debug)]
pub struct Throttle {
    accounts: Table,
    addresses: Table,
    keys: std::collections::hash_map::RandomState,
}

impl Throttle {
    /// A limiter with these limits.
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            accounts: Table::new(limits.per_account, limits.max_tracked),
            addresses: Table::new(limits.per_address, limits.max_tracked),
            keys: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Entries held (accounts, addresses): never more than `max_tracked` each.
    pub fn tracked(&self) -> (usize, usize) {
        (self.accounts.len(), self.addresses.len())
    }

    fn account_key(&self, name: &str) -> u64 {
        self.keys.hash_one(("account", name))
    }

    fn address_key(&self, ip: IpAddr) -> u64 {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.keys.hash_one(("v4", v4.octets())),
            IpAddr::V6(v6) => self.keys.hash_one(("v6", &v6.octets()[..8])),
        }
    }

    /// Counts a sign-in attempt for `name` from `ip` (address first, so a refused address never
    /// touches the account table), or refuses it.
    ///
    /// # Errors
    /// [`Throttled`] when the address or the account is over its limit; nothing is counted then.
    pub fn attempt(&self, name: &str, ip: Option<IpAddr>) -> Result<(), Throttled> {
        let now = Instant::now();
        let refused = |retry_after| Throttled { retry_after };
        if let Some(ip) = ip {
            self.addresses
                .take(self.address_key(ip), now)
                .map_err(refused)?;
        }
        self.accounts
            .take(self.account_key(name), now)
            .map_err(refused)
    }

    /// A sign-in succeeded: its attempt does not count.
    pub fn succeeded(&self, name: &str, ip: Option<IpAddr>) {
        let now = Instant::now();
        if let Some(ip) = ip {
            self.addresses.refund(self.address_key(ip), now);
        }
        self.accounts.refund(self.account_key(name), now);
    }
}
