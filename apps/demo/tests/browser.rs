//! The demo's main flows in a real browser: headless Chromium driven through chromedriver
//! (WebDriver) against the real binary, checking what the user sees on each page.
//!
//! Two WebDriver sessions are two browsers with their own profiles, so their own cookie jars:
//! alice's laptop and her phone. Needs `chromium` and `chromium-driver` (Debian packages;
//! `scripts/test` installs them): a machine without them fails this test, it does not skip it.
//! Every wait is bounded, the whole scenario has a deadline, and the demo and chromedriver (with
//! the browsers it started) are stopped when their guards drop, a failing test included.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// The whole scenario's deadline (it takes a few seconds).
const SCENARIO: Duration = Duration::from_secs(180);
/// How long one page may take to appear.
const PAGE: Duration = Duration::from_secs(15);

const LAPTOP_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                         Chrome/131.0.0.0 Safari/537.36";
const PHONE_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like \
                        Gecko) Chrome/131.0.0.0 Mobile Safari/537.36";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `name` on the `PATH`; the test fails (it does not skip) when it is missing.
fn required(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: this test needs Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver; scripts/test installs them)"
            )
        })
}

/// The demo binary on a memory store, killed when dropped.
struct Demo {
    child: Child,
    url: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessionkit-demo"));
    for k in [
        "APP_ENV",
        "DEMO_USERS_FILE",
        "SECRET_KEY",
        "SESSION_TYPE",
        "SESSION_FILE_DIR",
        "SESSION_REDIS_URL",
        "REDIS_URL",
        "DATABASE_URL",
        "SESSION_FALLBACK",
        "SESSION_AUDIT_URL",
        "SESSION_COOKIE_SECURE",
    ] {
        cmd.env_remove(k);
    }
    // The default cookie settings (`__Host-session`, Secure): Chromium treats http://127.0.0.1
    // as a secure context, so the browser keeps them as it would over HTTPS.
    let mut child = cmd
        .env("SESSION_TYPE", "memory")
        .env("RUST_LOG", "error")
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let mut lines = BufReader::new(stdout).lines();
    let started = lines.next().unwrap().unwrap();
    assert!(started.contains("sessionkit demo on"), "{started}");
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    demo
}

/// chromedriver in its own process group, with the browsers it starts. Dropping it asks it to
/// shut down (it closes its browsers), then kills the whole group: killing chromedriver alone
/// would leave its Chromium processes running.
struct Chromedriver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(
                b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The group's id is chromedriver's pid (`process_group(0)`).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_chromedriver() -> Chromedriver {
    let exe = required("chromedriver");
    let port = free_port();
    let child = Command::new(exe)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Chromedriver {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&driver.addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

/// A new browser (its own profile and cookie jar) that identifies itself as `user_agent`.
async fn browser(driver: &Chromedriver, user_agent: &str) -> Client {
    let chromium = required("chromium");
    let mut caps = Capabilities::new();
    caps.insert("browserName".into(), "chrome".into());
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            // As root in a container: no sandbox, no small /dev/shm.
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                format!("--user-agent={user_agent}"),
            ],
        }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://{}", driver.addr))
        .await
        .expect("a WebDriver session")
}

/// What one browser is showing.
struct Page {
    path: String,
    query: Option<String>,
    text: String,
}

impl Page {
    fn shows(&self, wanted: &str) -> &Self {
        assert!(
            self.text.contains(wanted),
            "{} does not show {wanted:?}:\n{}",
            self.path,
            self.text
        );
        self
    }

    fn lacks(&self, unwanted: &str) -> &Self {
        assert!(
            !self.text.contains(unwanted),
            "{} shows {unwanted:?}:\n{}",
            self.path,
            self.text
        );
        self
    }
}

/// Waits until `b` shows a page at `path` with `heading` as its `h1`, and reads it.
async fn on_page(b: &Client, path: &str, heading: &str) -> Page {
    let h1 = format!("//h1[contains(., {heading:?})]");
    let start = Instant::now();
    // A page that navigates on (a form's redirect) can replace the body between finding it and
    // reading it: read again from the heading on.
    let (url, text) = loop {
        b.wait()
            .at_most(PAGE)
            .for_element(Locator::XPath(&h1))
            .await
            .unwrap_or_else(|e| panic!("no heading {heading:?} on {path}: {e}"));
        let url = b.current_url().await.unwrap();
        let text = match b.find(Locator::Css("body")).await {
            Ok(body) => body.text().await,
            Err(e) => Err(e),
        };
        match text {
            Ok(text) => break (url, text),
            Err(e) if start.elapsed() < PAGE => {
                eprintln!("reading {path} again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("could not read {path}: {e}"),
        }
    };
    let page = Page {
        path: url.path().to_owned(),
        query: url.query().map(str::to_owned),
        text,
    };
    assert_eq!(page.path, path, "{heading:?} at the wrong address");
    page
}

async fn visit(b: &Client, demo: &Demo, path: &str) {
    b.goto(&format!("{}{path}", demo.url)).await.unwrap();
}

async fn click(b: &Client, xpath: &str) {
    b.find(Locator::XPath(xpath))
        .await
        .unwrap_or_else(|e| panic!("nothing to click at {xpath}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Signs in from the sign-in form as a person would: types the name and password, presses the
/// button.
async fn sign_in(b: &Client, demo: &Demo, name: &str, password: &str) -> Page {
    visit(b, demo, "/").await;
    on_page(b, "/login", "Sign in").await.lacks("Signed in as");
    b.find(Locator::Id("username"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    b.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    click(b, "//form[@action='/login']//button[@type='submit']").await;
    let page = on_page(b, "/dashboard", &format!("Hello, {name}")).await;
    page.shows(&format!("Signed in as {name}"));
    page
}

/// The XPath of the button labelled `label` in the table row that mentions `row`.
fn button_in_row(row: &str, label: &str) -> String {
    format!("//tr[td[contains(., {row:?})]]//button[normalize-space(.)={label:?}]")
}

async fn scenario(demo: &Demo, driver: &Chromedriver) {
    let laptop = browser(driver, LAPTOP_UA).await;
    let phone = browser(driver, PHONE_UA).await;

    // Sign in on the laptop: the dashboard knows this device.
    sign_in(&laptop, demo, "alice", "wonderland")
        .await
        .shows("Chrome on Linux")
        .shows("You are signed in on 1 device.");

    // Sign in on the phone too: a second browser, a second session, its own cookie.
    sign_in(&phone, demo, "alice", "wonderland")
        .await
        .shows("Chrome on Android")
        .shows("You are signed in on 2 devices.");
    let cookie = |b: &Client| {
        let b = b.clone();
        async move { b.get_named_cookie("__Host-session").await.unwrap() }
    };
    assert_ne!(
        cookie(&laptop).await.value(),
        cookie(&phone).await.value(),
        "two browsers, two sessions"
    );

    // Your devices, seen from the laptop: both, this one marked.
    visit(&laptop, demo, "/devices").await;
    on_page(&laptop, "/devices", "Your devices")
        .await
        .shows("Chrome on Linux")
        .shows("This device")
        .shows("Chrome on Android");

    // A user is not an administrator.
    visit(&laptop, demo, "/admin").await;
    on_page(&laptop, "/admin", "Administrators only").await;

    // Sign the phone out from the laptop.
    visit(&laptop, demo, "/devices").await;
    on_page(&laptop, "/devices", "Your devices").await;
    click(&laptop, &button_in_row("Chrome on Android", "Revoke")).await;
    on_page(&laptop, "/devices", "Your devices")
        .await
        .shows("That device has been signed out.")
        .shows("Chrome on Linux")
        .lacks("Chrome on Android");

    // The phone finds itself signed out at its next page.
    visit(&phone, demo, "/devices").await;
    on_page(&phone, "/login", "Sign in")
        .await
        .lacks("Signed in as");

    // An administrator signs alice out everywhere, from the phone.
    sign_in(&phone, demo, "admin", "admin-demo").await;
    click(&phone, "//nav//a[.='Admin']").await;
    on_page(&phone, "/admin", "Admin")
        .await
        .shows("Sessions per user")
        .shows("alice");
    click(&phone, &button_in_row("alice", "Sign out everywhere")).await;
    on_page(&phone, "/admin", "Admin")
        .await
        .shows("Signed out 1 session(s) of alice.");

    // The laptop is signed out.
    visit(&laptop, demo, "/dashboard").await;
    on_page(&laptop, "/login", "Sign in")
        .await
        .lacks("Signed in as");

    // The administrator signs out with the header's button.
    click(&phone, "//header//button[normalize-space(.)='Sign out']").await;
    let page = on_page(&phone, "/login", "Sign in").await;
    page.shows("You have signed out.").lacks("Signed in as");
    assert_eq!(page.query.as_deref(), Some("signed-out"));
    visit(&phone, demo, "/admin").await;
    on_page(&phone, "/login", "Sign in").await;

    laptop.close().await.unwrap();
    phone.close().await.unwrap();
}

#[test]
fn main_flows_in_headless_chromium() {
    // Both checked before anything starts, so a missing package reads as such.
    required("chromium");
    let driver = start_chromedriver();
    let demo = start_demo();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(SCENARIO, scenario(&demo, &driver))
            .await
            .expect("the browser scenario ran past its deadline");
    });
}
