//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver. The page of one node of a 3-node cluster shows
//! the members and the leader, then, without reloading, a worker's session, a call made
//! through the SDK reaching `completed`, its payload as text (markup in it stays text), a
//! call run from the page's own form with its result, an execution that waits until
//! cancelled cancelled by the detail's cancel button (live in the page, and in the fabric),
//! and a stopped node shown down. On a node with auth on, the page asks for a token, shows the
//! node's refusals, and works once given one (which it keeps out of every URL); a token
//! revoked while the page is open ends its live stream, and the page says so and stops.
//!
//! `WEFT_SCREENSHOTS=docs/dashboard` (relative to the workspace root) saves screenshots there.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{Value, json};
use weft_agent::{Agent, Context, Fail, Worker};

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

/// Clicks what `css` finds, as a user would; again if the page redrew it meanwhile (a
/// snapshot replaces the tables' rows).
async fn click(browser: &Browser, css: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let clicked = match browser.find(Locator::Css(css)).await {
            Ok(element) => element.click().await,
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(css, error = %e, "clicking again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot click {css}: {e}"),
        }
    }
}

/// Types `value` into the input `css` finds, in place of what it held.
async fn fill(browser: &Browser, css: &str, value: &str) {
    let input = browser.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
    input.clear().await.expect("the input clears");
    input.send_keys(value).await.expect("the input takes the keys");
}

/// A script: the id of the first execution of `delegate` the executions table shows, once it
/// shows it as `status`; else null.
fn row_of(delegate: &str, status: &str) -> String {
    format!(
        "const r = [...document.querySelectorAll('#executions tr[data-execution-id]')]
            .find(r => r.querySelector('.delegate').textContent === '{delegate}');
         return r && r.querySelector('.status').textContent === '{status}' ? Number(r.dataset.executionId) : null;"
    )
}

/// A script expression: the status the executions table shows for execution `id`.
fn row_status(id: u64) -> String {
    format!(
        "(document.querySelector(\"#executions tr[data-execution-id='{id}'] .status\") || {{}}).textContent"
    )
}

/// Saves a screenshot as `NAME.png` under `WEFT_SCREENSHOTS`, if that is set.
async fn screenshot(browser: &Browser, name: &str) {
    let Ok(dir) = std::env::var("WEFT_SCREENSHOTS") else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot is written");
}

/// Calls `echo.say` with `args` (JSON) from the page's call form; what the page shows once
/// the call completed.
async fn call_from_the_page(browser: &Browser, args: &str) -> String {
    click(browser, "#call-box summary").await;
    fill(browser, "#call-agent", "echo").await;
    fill(browser, "#call-delegate", "say").await;
    fill(browser, "#call-args", args).await;
    click(browser, "#call button[type=submit]").await;
    let shown = until(
        browser,
        "the call's result",
        r"const t = document.getElementById('call-result').textContent;
          return /^execution \d+ completed: /.test(t) ? t : null;",
    )
    .await;
    shown.as_str().unwrap().to_owned()
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
    let id = until(browser, "the call completed", &row_of("say", "completed")).await;

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
    click(browser, &format!("#executions tr[data-execution-id='{id}']")).await;
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
    let disabled = browser.execute("return document.getElementById('detail-cancel').disabled;", vec![]).await;
    assert_eq!(disabled.unwrap(), true, "a finished execution cannot be cancelled");

    tracing::info!("the page's call form runs a call and shows its result");
    let shown = call_from_the_page(browser, r#"{"from": "the page"}"#).await;
    let shown = shown.as_str();
    assert!(shown.ends_with(r#"completed: {"from":"the page"}"#), "{shown}");
    let called: u64 = shown.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("an execution id");
    let e = client.execution(called).await.expect("the called execution");
    assert_eq!((e.delegate.as_str(), e.status), ("say", weft_agent::Status::Completed), "{e:?}");
    assert_eq!(e.result::<Value>().unwrap(), json!({"from": "the page"}));
    until(browser, "the call's row completed", &format!("return {} === 'completed';", row_status(called)))
        .await;

    tracing::info!("a call that waits until cancelled: the detail's cancel button cancels it");
    fill(browser, "#call-delegate", "wait").await;
    fill(browser, "#call-args", "null").await;
    click(browser, "#call button[type=submit]").await;
    let waiting = until(browser, "the waiting call assigned", &row_of("wait", "assigned")).await;
    let waiting = waiting.as_u64().unwrap();
    click(browser, &format!("#executions tr[data-execution-id='{waiting}']")).await;
    let detail_status = "document.querySelector('#detail-fields [data-field=status]').textContent";
    until(
        browser,
        "its detail, with cancel enabled",
        &format!(
            "return !document.getElementById('detail').hidden
                && document.getElementById('detail-id').textContent === '#{waiting}'
                && {detail_status} === 'assigned' && !document.getElementById('detail-cancel').disabled;"
        ),
    )
    .await;
    let before = client.execution(waiting).await.expect("the waiting execution");
    assert_eq!(before.status, weft_agent::Status::Assigned, "its handler runs: {before:?}");
    let calling = browser.execute("return document.getElementById('call-result').textContent;", vec![]).await;
    assert_eq!(calling.unwrap(), "calling…", "the page's call waits for it");
    click(browser, "#detail-cancel").await;
    let cancelled = until(
        browser,
        "the execution cancelled, in the list and the detail",
        &format!(
            "const shown = {{ row: {}, detail: {detail_status},
                 message: document.getElementById('detail-message').textContent,
                 disabled: document.getElementById('detail-cancel').disabled,
                 call: document.getElementById('call-result').textContent }};
             return shown.row === 'cancelled' && shown.detail === 'cancelled' ? shown : null;",
            row_status(waiting)
        ),
    )
    .await;
    assert_eq!(cancelled["message"], "cancelled 1 execution(s)", "{cancelled}");
    assert_eq!(cancelled["disabled"], true, "{cancelled}");
    until(
        browser,
        "the page's call ended cancelled",
        &format!("return document.getElementById('call-result').textContent.startsWith('execution {waiting} cancelled');"),
    )
    .await;
    let after = client.execution(waiting).await.expect("the cancelled execution");
    assert_eq!(after.status, weft_agent::Status::Cancelled, "cancelled in the fabric: {after:?}");

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

/// The page's auth banner: its text while shown, else null.
const AUTH_BANNER: &str =
    "const b = document.getElementById('auth-message'); return b.hidden ? null : b.textContent;";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_asks_for_a_token_on_a_node_with_auth() {
    init_tracing();
    let driver = Chromedriver::start().await;
    let secrets = tempfile::tempdir().expect("temp dir");
    let admin = weft_fabric::auth::Credential::generate().reveal();
    let file = secrets.path().join("admin.token");
    std::fs::write(&file, format!("{admin}\n")).unwrap();
    let mut cluster = Cluster::start(1, |c| {
        c.auth = true;
        c.auth_bootstrap_token_file = Some(file.clone());
    })
    .await;
    let browser = driver.browser().await;
    let outcome = AssertUnwindSafe(with_auth(&browser, &mut cluster, &admin)).catch_unwind().await;
    let _ = browser.close().await;
    drop(driver);
    cluster.shutdown().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn with_auth(browser: &Browser, cluster: &mut Cluster, admin: &str) {
    cluster.wait_for_leader().await;
    let url = format!("http://{}/ui/", cluster.addrs[0]);
    let token = weft_agent::Token::new(admin).unwrap();
    let id = token.id().unwrap().to_owned();

    tracing::info!("without a token the page loads and says what is missing");
    browser.goto(&url).await.expect("the page loads");
    let shown = until(browser, "the refusal", AUTH_BANNER).await;
    assert!(shown.as_str().unwrap().contains("requires a bearer token"), "{shown}");
    assert!(shown.as_str().unwrap().contains("enter a token"), "{shown}");
    let live = browser.find(Locator::Id("live")).await.unwrap().text().await.unwrap();
    assert_eq!(live, "not authorized");
    screenshot(browser, "auth-no-token").await;

    tracing::info!("a token the cluster does not know: the node's message");
    let stranger = weft_fabric::auth::Credential::generate().reveal();
    fill(browser, "#auth-token", &stranger).await;
    click(browser, "#auth button[type=submit]").await;
    let shown = until(
        browser,
        "the unknown token refused",
        "const b = document.getElementById('auth-message');
         return !b.hidden && b.textContent.includes('unknown token') ? b.textContent : null;",
    )
    .await;
    assert!(!shown.as_str().unwrap().contains(&stranger), "the secret is not shown: {shown}");

    tracing::info!("the admin token: the page works, and shows the token's id only");
    fill(browser, "#auth-token", admin).await;
    click(browser, "#auth button[type=submit]").await;
    until(
        browser,
        "the member shown",
        &format!(
            "{MEMBERS} return m.length === 1 && document.getElementById('auth-message').hidden ? m : null;"
        ),
    )
    .await;
    let state = browser.find(Locator::Id("auth-state")).await.unwrap().text().await.unwrap();
    assert_eq!(state, format!("token {id}"));
    let input = browser.execute("return document.getElementById('auth-token').value;", vec![]).await.unwrap();
    assert_eq!(input, "", "the field is cleared once the token is in use");

    tracing::info!("the page's call form sends the token too");
    let worker = Worker::builder(cluster.endpoints())
        .token(Some(token))
        .agent(
            Agent::new("echo")
                .delegate("say", |_ctx: Context, args: Value| async move { Ok::<_, Fail>(args) }),
        )
        .build()
        .unwrap();
    let stopper = worker.stopper();
    let serving = tokio::spawn(worker.run());
    let shown = call_from_the_page(browser, r#"{"with": "a token"}"#).await;
    assert!(shown.ends_with(r#"{"with":"a token"}"#), "{shown}");
    screenshot(browser, "auth-token").await;

    tracing::info!("the token stays out of every URL the page asked for, and survives a reload of the tab");
    let urls = browser
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);",
            vec![],
        )
        .await
        .unwrap();
    assert!(!urls.to_string().contains(admin), "{urls}");
    browser.refresh().await.expect("the page reloads");
    until(
        browser,
        "the member shown after a reload",
        &format!("{MEMBERS} return m.length === 1 ? m : null;"),
    )
    .await;

    tracing::info!("forget: the page is refused again");
    click(browser, "#auth-forget").await;
    let shown = until(browser, "the refusal after forget", AUTH_BANNER).await;
    assert!(shown.as_str().unwrap().contains("requires a bearer token"), "{shown}");
    let stored = browser.execute("return sessionStorage.getItem('weft.token');", vec![]).await.unwrap();
    assert_eq!(stored, Value::Null);
    stopper.stop();
    let _ = tokio::time::timeout(PATIENCE, serving).await;

    tracing::info!("a token revoked while the page is open: its live stream ends, and the page says why");
    let channel = channel(&cluster.addrs[0]).await;
    let none: &[&str] = &[];
    let (viewer, viewer_id) =
        crate::authz::create_token(&channel, admin, "viewer", "operator", [none; 4], None).await;
    fill(browser, "#auth-token", &viewer).await;
    click(browser, "#auth button[type=submit]").await;
    until(
        browser,
        "the member shown with the viewer's token",
        &format!(
            "{MEMBERS} return m.length === 1 && document.getElementById('auth-message').hidden ? m : null;"
        ),
    )
    .await;
    crate::revoke::revoke(&channel, admin, &viewer_id).await;
    // The stream's own end, not a refused reconnect: it says the call it opened ends here.
    let shown = until(
        browser,
        "the revoke shown",
        "const b = document.getElementById('auth-message');
         return !b.hidden && b.textContent.includes('ends here') ? b.textContent : null;",
    )
    .await;
    let shown = shown.as_str().unwrap();
    assert!(shown.contains(&format!("token \"{viewer_id}\" was revoked")), "{shown}");
    let live = browser.find(Locator::Id("live")).await.unwrap().text().await.unwrap();
    assert_eq!(live, "not authorized");
}
