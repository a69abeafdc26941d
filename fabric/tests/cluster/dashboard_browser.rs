//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver. The page of one node of a 3-node cluster shows
//! the members and the leader, then, without reloading, a worker's session, a call made
//! through the SDK reaching `completed`, its payload as text (markup in it stays text), and a
//! stopped node shown down.
//!
//! `WEFT_SCREENSHOTS=docs/dashboard` (relative to the workspace root) saves screenshots there.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{Value, json};

use super::dashboard::{echo_worker, json_client};
use crate::support::*;

/// A `chromedriver` this test started; killed when dropped, its and Chromium's temporary
/// files (profile, shared memory) removed with `tmp`.
struct Chromedriver {
    child: Child,
    url: String,
    tmp: tempfile::TempDir,
}

impl Chromedriver {
    /// Starts `chromedriver` on a free port and waits until it listens. Fails (never skips)
    /// when it is not installed.
    async fn start() -> Self {
        let port = free_port();
        let tmp = tempfile::tempdir().expect("a temp dir for Chromium");
        let child = match Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot run chromedriver ({e}): the dashboard's browser test needs headless Chromium; \
                 install the Debian packages chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
            ),
        };
        let driver = Self { child, url: format!("http://127.0.0.1:{port}"), tmp };
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port} within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A headless Chromium session.
    async fn browser(&self) -> Browser {
        let mut caps = serde_json::Map::new();
        let profile = format!("--user-data-dir={}", self.tmp.path().join("profile").display());
        let args = [
            &profile,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1440,1200",
        ];
        caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!("no Chromium session from chromedriver (is the chromium package installed?): {e}")
            })
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` in the page until it returns something other than null or false; that.
async fn until(browser: &Browser, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value = browser.execute(script, vec![]).await.expect("the script runs");
        if !value.is_null() && value != Value::Bool(false) {
            return value;
        }
        if Instant::now() >= deadline {
            let page = browser
                .execute(
                    "return document.getElementById('live').textContent + ' | ' + document.body.innerText;",
                    vec![],
                )
                .await;
            panic!("{what}: not shown within {PATIENCE:?}; the page: {page:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Saves a screenshot as `NAME.png` under `WEFT_SCREENSHOTS`, if that is set.
async fn screenshot(browser: &Browser, name: &str) {
    let Ok(dir) = std::env::var("WEFT_SCREENSHOTS") else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot is written");
}

/// Sets `m` to the members the page shows: `[{id, role, gossip}]`.
const MEMBERS: &str =
    "const m = [...document.querySelectorAll('#members tbody tr[data-member-id]')].map(r => ({
    id: Number(r.dataset.memberId), role: r.querySelector('.role').textContent,
    gossip: r.querySelector('.gossip').textContent }));";

/// Arguments with markup in them: it must show as text, never become elements.
const HOSTILE: &str = r#"<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">"#;
/// How the page shows them (inside a JSON string, so the quotes are escaped).
const HOSTILE_SHOWN: &str = r#"<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\">"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_a_live_cluster_in_chromium() {
    init_tracing();
    let driver = Chromedriver::start().await;
    let mut cluster = Cluster::start(3, |_| {}).await;
    let browser = driver.browser().await;
    let outcome = AssertUnwindSafe(scenario(&browser, &mut cluster)).catch_unwind().await;
    let _ = browser.close().await;
    drop(driver);
    cluster.shutdown().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(browser: &Browser, cluster: &mut Cluster) {
    let leader = cluster.wait_for_leader().await;
    let viewed = 1;
    let stopped = (2..=3).find(|id| *id != leader).unwrap();
    let url = format!("http://{}/ui/", cluster.addrs[viewed as usize - 1]);

    tracing::info!(%url, "the page shows three members and the leader");
    browser.goto(&url).await.expect("the page loads");
    browser.execute("window.__loaded_once = 'yes'; return null;", vec![]).await.unwrap();
    let members = until(
        browser,
        "three alive members",
        &format!("{MEMBERS} return m.length === 3 && m.every(x => x.gossip === 'alive') ? m : null;"),
    )
    .await;
    let leaders: Vec<&Value> = members.as_array().unwrap().iter().filter(|m| m["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{members}");
    assert_eq!(leaders[0]["id"], leader);
    let pill = browser.find(Locator::Id("leader")).await.unwrap().text().await.unwrap();
    assert!(pill.starts_with(&format!("leader: node {leader}")), "{pill}");

    tracing::info!("a worker connects and a call runs through the SDK: the page shows both");
    let (stopper, worker) = echo_worker(cluster.endpoints());
    let session = until(
        browser,
        "the echo worker's session",
        "const r = [...document.querySelectorAll('#sessions tr[data-session-id]')]
            .find(r => r.querySelector('.name').textContent === 'echo-worker');
         return r ? r.querySelector('.delegates').textContent : null;",
    )
    .await;
    assert!(
        session.as_str().unwrap().starts_with("echo(") && session.as_str().unwrap().contains("say"),
        "{session}"
    );
    let client = json_client(cluster.endpoints());
    let args = json!({ "text": HOSTILE });
    let reply: Value = client.call("echo", "say", &args).await.expect("the call completes");
    assert_eq!(reply, args);
    let id = until(
        browser,
        "the call completed",
        "const r = [...document.querySelectorAll('#executions tr[data-execution-id]')]
            .find(r => r.querySelector('.delegate').textContent === 'say');
         return r && r.querySelector('.status').textContent === 'completed' ? Number(r.dataset.executionId) : null;",
    )
    .await;

    screenshot(browser, "overview").await;

    tracing::info!("markup in the payload shows as text and never runs");
    let shown = browser
        .execute(
            "const r = document.querySelector(`#executions tr[data-execution-id='${arguments[0]}']`);
             return { args: r.querySelector('.args').textContent,
                      elements: document.querySelectorAll('main img, main script').length,
                      xss: window.__xss === undefined ? null : window.__xss };",
            vec![id.clone()],
        )
        .await
        .unwrap();
    assert!(shown["args"].as_str().unwrap().contains(HOSTILE_SHOWN), "{shown}");
    assert_eq!((&shown["elements"], &shown["xss"]), (&json!(0), &Value::Null), "{shown}");
    browser
        .find(Locator::Css(&format!("#executions tr[data-execution-id='{id}']")))
        .await
        .expect("the execution's row")
        .click()
        .await
        .expect("a click on the row");
    let detail = until(
        browser,
        "the execution's detail",
        "const d = document.getElementById('detail');
         const out = document.getElementById('detail-outcome').textContent;
         return !d.hidden && out.includes('text') ? { args: document.getElementById('detail-args').textContent, out,
             elements: d.querySelectorAll('img, script').length } : null;",
    )
    .await;
    assert!(detail["args"].as_str().unwrap().contains(HOSTILE_SHOWN), "{detail}");
    assert!(detail["out"].as_str().unwrap().contains(HOSTILE_SHOWN), "the result too: {detail}");
    assert_eq!(detail["elements"], 0, "{detail}");
    screenshot(browser, "execution-detail").await;

    tracing::info!(stopped, "a stopped node shows down");
    cluster.stop(stopped).await;
    until(
        browser,
        "the stopped node down",
        &format!("{MEMBERS} return m.some(x => x.id === {stopped} && x.gossip === 'down') ? true : null;"),
    )
    .await;
    screenshot(browser, "node-down").await;
    let still = browser.execute("return window.__loaded_once || null;", vec![]).await.unwrap();
    assert_eq!(still, "yes", "the page updated without a reload");
    stopper.stop();
    let _ = tokio::time::timeout(PATIENCE, worker).await;
}
