//! SECURITY.md checks 1–13, 16–19 and 21, driven through a real axum router.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

#[path = "security/cookies.rs"]
mod cookies;
#[path = "security/lifecycle.rs"]
mod lifecycle;
#[path = "security/requests.rs"]
mod requests;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use sessionkit::id::{IdGenerator, SessionId};
use sessionkit::store::{SessionStore, StorageKey};
use sessionkit::test_util::CookieKeys;
use sessionkit::Config;
use support::{signed, TestApp};
