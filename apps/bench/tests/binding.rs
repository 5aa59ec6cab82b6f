//! Device binding (`SESSION_BINDING`, `SESSION_BINDING_ACTION`, `SESSION_TRUSTED_PROXIES`) and
//! header tokens (`SESSION_HEADER`), issue 16 items 3 and 6, through the real bench app binary
//! over TCP: clients connect from different loopback addresses (127.0.0.0/8) to be on different
//! /24 networks, and the app's own log is read for the `Suspicious` events.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::Ipv4Addr;

use support::{call_from, BenchApp, RawReply};

mod support;

const UA_A: &str = "Agent-A/7f3c1";
const UA_B: &str = "Agent-B/9d2e4";
const HOME: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// A bench app whose session events go to a log file the test reads.
struct Logged {
    app: BenchApp,
    log: tempfile::NamedTempFile,
}

impl Logged {
    fn spawn(envs: &[(&str, &str)]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        // Appending, so the two handles (stdout, stderr) never overwrite each other.
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap();
        let mut all = vec![
            ("SESSION_TYPE", "memory"),
            ("RUST_LOG", "warn,sessionkit::events=info"),
        ];
        all.extend_from_slice(envs);
        let app = BenchApp::spawn_logged(&all, &file);
        Self { app, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    fn suspicious(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("suspicious"))
            .map(str::to_owned)
            .collect()
    }

    /// `method path` from `from` with user agent `ua`, cookie `cookie` and more headers.
    fn call(
        &self,
        from: Ipv4Addr,
        method: &str,
        path: &str,
        ua: &str,
        cookie: Option<&str>,
        more: &[(&str, &str)],
    ) -> RawReply {
        let mut h = vec![("User-Agent", ua)];
        if let Some(c) = cookie {
            h.push(("Cookie", c));
        }
        h.extend_from_slice(more);
        call_from(from, self.app.port, method, path, &h)
    }

    /// Signs in and returns the session cookie pair.
    fn login(&self, from: Ipv4Addr, ua: &str, more: &[(&str, &str)]) -> String {
        let r = self.call(from, "POST", "/login", ua, None, more);
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        r.session_cookie().expect("login sets the cookie")
    }
}

#[test]
fn binding_off_lets_another_user_agent_in_without_an_event() {
    let app = Logged::spawn(&[]);
    let c = app.login(HOME, UA_A, &[]);
    let r = app.call(
        Ipv4Addr::new(127, 0, 9, 9),
        "GET",
        "/read",
        UA_B,
        Some(&c),
        &[],
    );
    assert_eq!((r.status, r.body.as_str()), (200, "42"));
    assert!(app.suspicious().is_empty(), "{}", app.log());
}

#[test]
fn ua_binding_with_log_reports_and_keeps_the_session() {
    let app = Logged::spawn(&[("SESSION_BINDING", "ua")]);
    let c = app.login(HOME, UA_A, &[]);
    // Same device, even from another network: no event.
    let r = app.call(
        Ipv4Addr::new(127, 0, 9, 9),
        "GET",
        "/read",
        UA_A,
        Some(&c),
        &[],
    );
    assert_eq!(r.body, "42");
    assert!(app.suspicious().is_empty(), "{}", app.log());
    // Another user agent: reported, and the session goes on under `log`.
    let r = app.call(HOME, "GET", "/read", UA_B, Some(&c), &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "42"));
    assert_eq!(r.session_cookie(), None, "the cookie stays as it is");
    let events = app.suspicious();
    assert_eq!(events.len(), 1, "{}", app.log());
    assert!(events[0].contains("user_agent_changed"), "{}", events[0]);
    // The reason is a fixed word: neither user agent nor the cookie reaches the log.
    let log = app.log();
    let value = c.split_once('=').unwrap().1;
    for secret in [UA_A, UA_B, value, &value[..43]] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    assert_eq!(
        app.call(HOME, "GET", "/read", UA_A, Some(&c), &[]).body,
        "42"
    );
}

#[test]
fn ua_binding_with_end_destroys_the_session() {
    let app = Logged::spawn(&[("SESSION_BINDING", "ua"), ("SESSION_BINDING_ACTION", "end")]);
    let c = app.login(HOME, UA_A, &[]);
    assert_eq!(
        app.call(HOME, "GET", "/read", UA_A, Some(&c), &[]).body,
        "42"
    );
    let r = app.call(HOME, "GET", "/read", UA_B, Some(&c), &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.session_cookie().as_deref(),
        Some("__Host-session="),
        "the response deletes the cookie"
    );
    assert!(app.suspicious()[0].contains("user_agent_changed"));
    // The record is gone: the original device with the same cookie is signed out too.
    assert_eq!(
        app.call(HOME, "GET", "/read", UA_A, Some(&c), &[]).status,
        401
    );
    // A write with the stolen cookie starts a fresh anonymous session, not the old one.
    let r = app.call(HOME, "GET", "/counter", UA_B, Some(&c), &[]);
    assert_eq!(r.body, "1");
}

#[test]
fn ua_ip_binding_groups_ipv4_clients_by_24() {
    let app = Logged::spawn(&[
        ("SESSION_BINDING", "ua+ip"),
        ("SESSION_BINDING_ACTION", "end"),
    ]);
    let c = app.login(HOME, UA_A, &[]);
    for same in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 254)] {
        let r = app.call(same, "GET", "/read", UA_A, Some(&c), &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "42"), "from {same}");
    }
    assert!(app.suspicious().is_empty(), "{}", app.log());
    let r = app.call(
        Ipv4Addr::new(127, 0, 1, 1),
        "GET",
        "/read",
        UA_A,
        Some(&c),
        &[],
    );
    assert_eq!(r.status, 401);
    let events = app.suspicious();
    assert_eq!(events.len(), 1);
    assert!(events[0].contains("network_changed"), "{}", events[0]);
    assert_eq!(
        app.call(HOME, "GET", "/read", UA_A, Some(&c), &[]).status,
        401
    );
}

#[test]
fn spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // Only 127.0.0.1 is a trusted proxy; the client connects from 127.0.0.5.
    let app = Logged::spawn(&[
        ("SESSION_BINDING", "ua+ip"),
        ("SESSION_BINDING_ACTION", "end"),
        ("SESSION_TRUSTED_PROXIES", "127.0.0.1"),
    ]);
    let peer = Ipv4Addr::new(127, 0, 0, 5);
    let c = app.login(peer, UA_A, &[("X-Forwarded-For", "198.51.100.1")]);
    // Another claimed address from the same peer: the claim is not believed, the peer is.
    let r = app.call(
        peer,
        "GET",
        "/read",
        UA_A,
        Some(&c),
        &[("X-Forwarded-For", "203.0.113.1")],
    );
    assert_eq!((r.status, r.body.as_str()), (200, "42"));
    // From another network, claiming the address it logged in with does not help.
    let r = app.call(
        Ipv4Addr::new(127, 0, 7, 5),
        "GET",
        "/read",
        UA_A,
        Some(&c),
        &[("X-Forwarded-For", "198.51.100.1")],
    );
    assert_eq!(r.status, 401);
    assert!(app.suspicious()[0].contains("network_changed"));
}

#[test]
fn forwarded_for_from_a_trusted_proxy_is_honored() {
    let app = Logged::spawn(&[
        ("SESSION_BINDING", "ua+ip"),
        ("SESSION_BINDING_ACTION", "end"),
        ("SESSION_TRUSTED_PROXIES", "127.0.0.1,10.0.0.0/8"),
    ]);
    let xff = |v| [("X-Forwarded-For", v)];
    let read = |c: &str, v| {
        app.call(HOME, "GET", "/read", UA_A, Some(c), &xff(v))
            .status
    };
    // IPv4 behind the proxy: the same /24 passes, another /24 ends the session.
    let c = app.login(HOME, UA_A, &xff("198.51.100.7"));
    assert_eq!(read(&c, "198.51.100.200"), 200);
    // The right-most untrusted hop is the client: a forged left part changes nothing, and a
    // trusted inner proxy (10/8) is skipped.
    assert_eq!(read(&c, "203.0.113.9, 198.51.100.8, 10.1.2.3"), 200);
    assert!(app.suspicious().is_empty(), "{}", app.log());
    assert_eq!(read(&c, "198.51.100.7, 203.0.113.7"), 401);
    // IPv6 behind the proxy: grouped by /64.
    let c = app.login(HOME, UA_A, &xff("2001:db8:1:2::1"));
    assert_eq!(read(&c, "2001:db8:1:2:ffff::9"), 200);
    assert_eq!(read(&c, "2001:db8:1:3::1"), 401);
    let events = app.suspicious();
    assert_eq!(events.len(), 2, "{}", app.log());
    assert!(events.iter().all(|e| e.contains("network_changed")));
    // Neither client address reaches the reason.
    assert!(events.iter().all(|e| !e.contains("reason=\"2001")));
}

#[test]
fn header_tokens_replace_the_cookie() {
    let app = Logged::spawn(&[("SESSION_HEADER", "X-Session-Token")]);
    let r = app.call(HOME, "POST", "/login", UA_A, None, &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert!(r.all("set-cookie").is_empty(), "no cookie in header mode");
    let token = r.all("x-session-token");
    assert_eq!(token.len(), 1);
    let token = token[0].to_owned();
    assert_eq!(
        token.len(),
        66,
        "the signed value, as the cookie carries it"
    );
    assert_eq!(r.all("cache-control"), ["no-store"]);
    assert!(r
        .all("vary")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("x-session-token")));
    // The header carries the session.
    let h = [("X-Session-Token", token.as_str())];
    let r = app.call(HOME, "GET", "/read", UA_A, None, &h);
    assert_eq!((r.status, r.body.as_str()), (200, "42"));
    assert!(r
        .all("vary")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("x-session-token")));
    assert!(r.all("x-session-token").is_empty(), "nothing new to send");
    assert_eq!(app.call(HOME, "GET", "/counter", UA_A, None, &h).body, "1");
    // A cookie with the same value is not read.
    let cookie = format!("__Host-session={token}");
    let r = app.call(HOME, "GET", "/read", UA_A, Some(&cookie), &[]);
    assert_eq!(r.status, 401);
    // Logout: the response empties the header, and the token no longer works.
    let r = app.call(HOME, "POST", "/logout", UA_A, None, &h);
    assert_eq!(r.body, "bye");
    assert_eq!(r.all("x-session-token"), [""]);
    assert!(r.all("set-cookie").is_empty());
    assert_eq!(r.all("cache-control"), ["no-store"]);
    assert_eq!(app.call(HOME, "GET", "/read", UA_A, None, &h).status, 401);
    // An anonymous write gets a token in the header too.
    let r = app.call(HOME, "GET", "/counter", UA_A, None, &[]);
    assert_eq!(r.body, "1");
    assert_eq!(r.all("x-session-token")[0].len(), 66);
}

#[test]
fn the_binding_key_is_out_of_the_app_s_reach() {
    let app = Logged::spawn(&[("SESSION_BINDING", "ua"), ("SESSION_BINDING_ACTION", "end")]);
    let c = app.login(HOME, UA_A, &[]);
    let r = app.call(HOME, "GET", "/kv", UA_A, Some(&c), &[]);
    assert_eq!(r.body, "{\"counter\":0}", "the fingerprint is not shown");
    let key = "/kv/__sessionkit.binding";
    assert_eq!(app.call(HOME, "GET", key, UA_A, Some(&c), &[]).status, 404);
    assert_eq!(
        app.call(HOME, "DELETE", key, UA_A, Some(&c), &[]).status,
        404
    );
    // Writing it is refused, so the binding still holds.
    let h = [
        ("User-Agent", UA_A),
        ("Cookie", c.as_str()),
        ("Content-Type", "application/json"),
    ];
    let r = support::exchange(HOME, app.app.port, "PUT", key, &h, "\"x\"");
    assert_eq!(r.status, 400);
    assert_eq!(
        app.call(HOME, "GET", "/read", UA_B, Some(&c), &[]).status,
        401
    );
}
