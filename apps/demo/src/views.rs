//! The demo's pages, rendered on the server with maud: no JavaScript, one inline style sheet.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use sessionkit::store::{Health, Meta, ServerStats, StorageKey, Timestamp};

use crate::csrf::FIELD;

const CSS: &str = r#"
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--accent:#2f5bea;--bg:#f7f8fa;--danger:#c0352b}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;align-items:center;gap:1.5rem;padding:.75rem 1.5rem;background:#fff;border-bottom:1px solid var(--line)}
header .brand{font-weight:650;color:var(--fg);text-decoration:none}
nav{display:flex;align-items:center;gap:1.1rem;flex:1}
nav a{color:var(--muted);text-decoration:none}
nav a:hover{color:var(--fg)}
nav a[aria-current]{color:var(--fg);font-weight:600}
nav .who{margin-left:auto;color:var(--muted)}
main{max-width:980px;margin:2rem auto;padding:0 1.5rem}
h1{font-size:1.45rem;margin:0 0 1.25rem}
h2{font-size:1.05rem;margin:0 0 .9rem}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:1.25rem 1.5rem;margin-bottom:1.5rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:1rem;margin-bottom:1.5rem}
.stat{font-size:1.8rem;font-weight:650}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.45rem 1.5rem;margin:0}
dt{color:var(--muted)}
dd{margin:0}
table{width:100%;border-collapse:collapse}
th,td{text-align:left;padding:.6rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
tr:last-child td{border-bottom:none}
th{color:var(--muted);font-weight:500;font-size:.85rem}
small,.muted{color:var(--muted)}
small{display:block;font-size:.8rem}
code{font:13px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
button{font:inherit;padding:.42rem .9rem;border-radius:6px;border:1px solid var(--accent);background:var(--accent);color:#fff;cursor:pointer}
button.secondary{background:#fff;color:var(--accent)}
button.danger{background:#fff;color:var(--danger);border-color:var(--danger)}
button.link{background:none;border:none;color:var(--muted);padding:0}
button.link:hover{color:var(--fg)}
form.inline{display:inline;margin:0}
.actions{display:flex;gap:.75rem;margin-top:1.25rem}
label{display:block;margin:.9rem 0 .3rem;font-weight:500}
input[type=text],input[type=password]{width:100%;padding:.5rem .65rem;border:1px solid #d0d5dd;border-radius:6px;font:inherit}
.narrow{max-width:380px;margin:4rem auto}
.narrow button{width:100%;margin-top:1.25rem}
.flash{padding:.7rem 1rem;border-radius:6px;background:#eef4ff;border:1px solid #c7d7fe;margin-bottom:1.25rem}
.flash.error{background:#fef3f2;border-color:#fecdca}
.badge{display:inline-block;padding:0 .5rem;border-radius:999px;background:#ecfdf3;color:#067647;font-size:.78rem;font-weight:600;margin-left:.4rem}
footer{max-width:980px;margin:0 auto 2rem;padding:0 1.5rem;color:var(--muted);font-size:.82rem}
"#;

/// Which page of the signed-in navigation is showing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tab {
    Dashboard,
    Devices,
    Admin,
}

/// What the signed-in header needs.
#[derive(Debug)]
pub(crate) struct Nav<'a> {
    pub(crate) user: &'a str,
    pub(crate) admin: bool,
    pub(crate) csrf: &'a str,
    pub(crate) tab: Tab,
}

fn csrf_input(token: &str) -> Markup {
    html! { input type="hidden" name=(FIELD) value=(token); }
}

fn page(title: &str, nav: Option<&Nav<'_>>, body: Markup) -> Markup {
    let current = |t: Tab| nav.is_some_and(|n| n.tab == t).then_some("page");
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sessionkit demo" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    a.brand href="/" { "sessionkit demo" }
                    @if let Some(n) = nav {
                        nav {
                            a href="/dashboard" aria-current=[current(Tab::Dashboard)] { "Dashboard" }
                            a href="/devices" aria-current=[current(Tab::Devices)] { "Your devices" }
                            @if n.admin {
                                a href="/admin" aria-current=[current(Tab::Admin)] { "Admin" }
                            }
                            span.who { "Signed in as " strong { (n.user) } }
                            form.inline method="post" action="/logout" {
                                (csrf_input(n.csrf))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
                footer { "sessionkit demo · process " (std::process::id()) }
            }
        }
    }
}

fn flash(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message {
            div.flash role="status" { (m) }
        }
    }
}

/// What the sign-in page shows besides the form.
#[derive(Debug, Default)]
pub(crate) struct LoginView<'a> {
    pub(crate) csrf: &'a str,
    pub(crate) error: Option<&'a str>,
    pub(crate) username: &'a str,
    pub(crate) notice: Option<&'a str>,
    pub(crate) development: bool,
}

pub(crate) fn login(v: &LoginView<'_>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            div.card.narrow {
                h1 { "Sign in" }
                (flash(v.notice))
                @if let Some(e) = v.error {
                    div.flash.error role="alert" { (e) }
                }
                form method="post" action="/login" {
                    (csrf_input(v.csrf))
                    label for="username" { "User name" }
                    input #username type="text" name="username" value=(v.username)
                        autocomplete="username" autocapitalize="none" required autofocus;
                    label for="password" { "Password" }
                    input #password type="password" name="password"
                        autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
                @if v.development {
                    p.muted { small { "Development mode: the demo accounts are printed in the server's terminal." } }
                }
            }
        },
    )
}

/// Formats a timestamp as UTC, e.g. `2026-11-23 16:49:30 UTC`.
pub(crate) fn utc(ts: Timestamp) -> String {
    let fmt =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts.as_millis()) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| format!("{} ms since 1970", ts.as_millis()))
}

/// `3 min ago`, `in 23 h 59 min`.
pub(crate) fn relative(ts: Timestamp, now: Timestamp) -> String {
    let (secs, future) = if ts >= now {
        (now.until(ts).as_secs(), true)
    } else {
        (ts.until(now).as_secs(), false)
    };
    let span = match secs {
        0..=59 => {
            return if future {
                "in under a minute".into()
            } else {
                "just now".into()
            }
        }
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn when(ts: Timestamp, now: Timestamp) -> Markup {
    html! { (utc(ts)) small { (relative(ts, now)) } }
}

/// A short name for a user agent: browser on system.
pub(crate) fn device_name(ua: Option<&str>) -> String {
    let Some(ua) = ua.filter(|u| !u.trim().is_empty()) else {
        return "Unknown device".into();
    };
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name);
    let system = [
        ("Android", "Android"),
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name);
    match (browser, system) {
        (Some(b), Some(s)) => format!("{b} on {s}"),
        (Some(b), None) => b.into(),
        (None, Some(s)) => s.into(),
        (None, None) => ua.chars().take(40).collect(),
    }
}

/// What the dashboard shows.
#[derive(Debug)]
pub(crate) struct DashboardView<'a> {
    pub(crate) nav: Nav<'a>,
    pub(crate) flash: Option<&'a str>,
    pub(crate) meta: &'a Meta,
    pub(crate) key: Option<&'a StorageKey>,
    pub(crate) store: &'a str,
    pub(crate) devices: usize,
    pub(crate) now: Timestamp,
}

pub(crate) fn dashboard(v: &DashboardView<'_>) -> Markup {
    let m = v.meta;
    let now = v.now;
    page(
        "Dashboard",
        Some(&v.nav),
        html! {
            h1 { "Hello, " (v.nav.user) }
            (flash(v.flash))
            div.card {
                h2 { "This session" }
                dl {
                    dt { "Signed in" }
                    dd { @if let Some(t) = m.auth_time { (when(t, now)) } @else { "—" } }
                    dt { "Session created" } dd { (when(m.created_at, now)) }
                    dt { "Last seen" } dd { (when(m.last_seen_at, now)) }
                    dt { "Expires when idle" } dd { (when(m.idle_expires_at, now)) }
                    dt { "Expires at the latest" } dd { (when(m.absolute_expires_at, now)) }
                    dt { "Device" } dd { (device_name(m.user_agent.as_deref())) small { (m.user_agent.as_deref().unwrap_or("no user agent")) } }
                    dt { "IP address" } dd { (m.ip.as_deref().unwrap_or("unknown")) }
                    dt { "Storage key" }
                    dd {
                        @if let Some(k) = v.key { code { (k.as_str()) } } @else { "—" }
                        small { "SHA-256 of the session ID: what the store holds. The ID itself never leaves the cookie." }
                    }
                    dt { "Session store" } dd { code { (v.store) } }
                    dt { "Served by process" } dd { (std::process::id()) }
                }
                div.actions {
                    form.inline method="post" action="/rotate" {
                        (csrf_input(v.nav.csrf))
                        button.secondary type="submit" { "Issue a new session ID" }
                    }
                }
            }
            div.card {
                h2 { "Your devices" }
                p {
                    "You are signed in on " strong { (v.devices) } " "
                    (if v.devices == 1 { "device" } else { "devices" }) ". "
                    a href="/devices" { "Review them" }
                }
            }
        },
    )
}

/// One of the user's sessions on the devices page.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) key: StorageKey,
    pub(crate) meta: Meta,
    pub(crate) current: bool,
}

/// What the devices page shows.
#[derive(Debug)]
pub(crate) struct DevicesView<'a> {
    pub(crate) nav: Nav<'a>,
    pub(crate) flash: Option<&'a str>,
    pub(crate) devices: &'a [Device],
    pub(crate) now: Timestamp,
}

pub(crate) fn devices(v: &DevicesView<'_>) -> Markup {
    let now = v.now;
    let others = v.devices.iter().filter(|d| !d.current).count();
    page(
        "Your devices",
        Some(&v.nav),
        html! {
            h1 { "Your devices" }
            (flash(v.flash))
            div.card {
                table {
                    thead { tr { th { "Device" } th { "IP address" } th { "Signed in" } th { "Last seen" } th { "Expires" } th {} } }
                    tbody {
                        @for d in v.devices {
                            tr {
                                td {
                                    (device_name(d.meta.user_agent.as_deref()))
                                    @if d.current { span.badge { "This device" } }
                                    small { code { (d.key.short()) "…" } }
                                }
                                td { (d.meta.ip.as_deref().unwrap_or("unknown")) }
                                td { (when(d.meta.created_at, now)) }
                                td { (when(d.meta.last_seen_at, now)) }
                                td { (when(d.meta.idle_expires_at.min(d.meta.absolute_expires_at), now)) }
                                td {
                                    @if d.current {
                                        form.inline method="post" action="/logout" {
                                            (csrf_input(v.nav.csrf))
                                            button.secondary type="submit" { "Sign out" }
                                        }
                                    } @else {
                                        form.inline method="post" action="/devices/revoke" {
                                            (csrf_input(v.nav.csrf))
                                            input type="hidden" name="key" value=(d.key.as_str());
                                            button.danger type="submit" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if others > 0 {
                    div.actions {
                        form.inline method="post" action="/devices/revoke-others" {
                            (csrf_input(v.nav.csrf))
                            button.danger type="submit" { "Sign out everywhere else" }
                        }
                    }
                }
            }
        },
    )
}

/// One row of the admin page.
#[derive(Debug)]
pub(crate) struct UserRow {
    pub(crate) name: String,
    pub(crate) admin: bool,
    pub(crate) sessions: usize,
    pub(crate) last_seen: Option<Timestamp>,
}

/// What the admin page shows.
#[derive(Debug)]
pub(crate) struct AdminView<'a> {
    pub(crate) nav: Nav<'a>,
    pub(crate) flash: Option<&'a str>,
    pub(crate) records: u64,
    pub(crate) store: &'a str,
    pub(crate) health: &'a Health,
    /// The figures of the store's server (Redis); `Ok(None)` for a store without one, `Err`
    /// when it would not give them.
    pub(crate) server: Result<Option<&'a ServerStats>, ()>,
    pub(crate) users: &'a [UserRow],
    pub(crate) now: Timestamp,
}

pub(crate) fn admin(v: &AdminView<'_>) -> Markup {
    let signed_in: usize = v.users.iter().map(|u| u.sessions).sum();
    page(
        "Admin",
        Some(&v.nav),
        html! {
            h1 { "Admin" }
            (flash(v.flash))
            div.grid {
                div.card { small { "Session records in the store" } div.stat { (v.records) } }
                div.card { small { "Signed-in sessions of demo users" } div.stat { (signed_in) } }
                div.card {
                    small { "Store" }
                    div.stat { code { (v.store) } }
                    small { (if v.health.ok { "healthy" } else { "unhealthy" }) ": " (v.health.detail) }
                }
            }
            (server_card(v.server))
            div.card {
                h2 { "Sessions per user" }
                table {
                    thead { tr { th { "User" } th { "Active sessions" } th { "Last seen" } th {} } }
                    tbody {
                        @for u in v.users {
                            tr {
                                td { (u.name) @if u.admin { span.badge { "admin" } } }
                                td { (u.sessions) }
                                td { @if let Some(t) = u.last_seen { (when(t, v.now)) } @else { span.muted { "—" } } }
                                td {
                                    // The administrator's own current session is kept, so
                                    // the button shows only when there is another one.
                                    @if u.sessions > usize::from(u.name == v.nav.user) {
                                        form.inline method="post" action="/admin/revoke-user" {
                                            (csrf_input(v.nav.csrf))
                                            input type="hidden" name="user" value=(u.name);
                                            button.danger type="submit" {
                                                @if u.name == v.nav.user { "Sign out other sessions" } @else { "Sign out everywhere" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                p.muted { small { "The record count includes anonymous sessions and expired records not yet cleaned up." } }
            }
        },
    )
}

/// The store's server: memory against its limit, clients, hit/miss, evictions and whether its
/// policy lets it evict live sessions.
fn server_card(server: Result<Option<&ServerStats>, ()>) -> Markup {
    let s = match server {
        Ok(None) => return html! {},
        Err(()) => {
            return html! { div.card { h2 { "Session server" } p.muted { "The server did not give its figures (see the log)." } } }
        }
        Ok(Some(s)) => s,
    };
    let policy = s.eviction_policy.as_deref().unwrap_or("unknown");
    html! {
        div.card #server {
            h2 { "Session server (" (s.server) @if s.nodes > 1 { ", " (s.nodes) " nodes" } ")" }
            table {
                tbody {
                    tr { th { "Used memory" } td #used-memory { (s.used_memory) " bytes" } }
                    tr { th { "Memory limit (maxmemory)" } td #maxmemory { @if s.maxmemory == 0 { "none" } @else { (s.maxmemory) " bytes" } } }
                    tr { th { "Connected clients" } td #connected-clients { (s.connected_clients) } }
                    tr { th { "Keyspace hits" } td #keyspace-hits { (s.keyspace_hits) } }
                    tr { th { "Keyspace misses" } td #keyspace-misses { (s.keyspace_misses) } }
                    tr { th { "Evicted keys" } td #evicted-keys { (s.evicted_keys) } }
                    tr { th { "Eviction policy (maxmemory-policy)" } td #maxmemory-policy { code { (policy) } } }
                }
            }
            @match s.may_evict_sessions() {
                Some(false) => p.muted { small { "Sessions are never evicted: a full server refuses writes instead." } },
                Some(true) => p.flash.error { "Under memory pressure this policy lets the server evict live sessions and sign users out without a trace: set maxmemory-policy to noeviction." },
                None => p.flash.error { "The eviction policy could not be read: check that it is noeviction." },
            }
        }
    }
}

fn message(status: StatusCode, title: &str, text: &str, link: (&str, &str)) -> Response {
    let body = page(
        title,
        None,
        html! {
            div.card.narrow {
                h1 { (title) }
                p { (text) }
                p { a href=(link.0) { (link.1) } }
            }
        },
    );
    (status, Html(body.into_string())).into_response()
}

/// The 403 for a form without a valid CSRF token.
pub(crate) fn forbidden() -> Response {
    tracing::info!("form refused: no valid CSRF token");
    message(
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form was not sent from a page of this site, or your session changed since it was \
         shown. Nothing was done.",
        ("/", "Back to the start page"),
    )
}

/// The 403 for a signed-in user who is not an administrator.
pub(crate) fn not_admin() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "Administrators only",
        "This page is for administrators.",
        ("/dashboard", "Back to your dashboard"),
    )
}

/// A 404 page.
pub(crate) fn not_found(text: &str) -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        text,
        ("/", "Back to the start page"),
    )
}

/// Renders a page as a response.
pub(crate) fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}
