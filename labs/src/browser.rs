//! Headless Chromium through WebDriver (Debian's `chromium` and `chromium-driver`), for the
//! operator page's tests and `meshwire bench ui`: chromedriver on a free loopback port, and a
//! session with a fixed window size.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("{what}: {detail} (apt-get install chromium chromium-driver)")]
    Missing { what: &'static str, detail: String },
    #[error("chromedriver: {0}")]
    Driver(String),
    #[error("a Chromium session through chromedriver on port {port}: {detail}")]
    Session { port: u16, detail: String },
}

/// Whether both are installed.
pub fn available() -> bool {
    std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists()
}

/// chromedriver, killed when dropped.
pub struct Chromedriver {
    child: Child,
    pub port: u16,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Chromedriver {
    /// Starts chromedriver on a free loopback port and returns once it says it listens.
    pub fn start() -> Result<Chromedriver, BrowserError> {
        if !available() {
            return Err(BrowserError::Missing {
                what: "chromium and chromedriver",
                detail: format!("{CHROMIUM} or {CHROMEDRIVER} not found"),
            });
        }
        let port = crate::ports::free_port()
            .map_err(|e| BrowserError::Driver(format!("a free port: {e}")))?;
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BrowserError::Driver(format!("start: {e}")))?;
        let out = child.stdout.take();
        let d = Chromedriver { child, port };
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(out) = out {
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if line.contains("started successfully") {
                        let _ = tx.send(());
                    }
                }
            });
        }
        rx.recv_timeout(Duration::from_secs(20))
            .map_err(|_| BrowserError::Driver("did not say it started within 20 s".into()))?;
        Ok(d)
    }

    /// A headless Chromium session, `width`×`height`, with 30 s for scripts and page loads.
    pub async fn session(&self, width: u32, height: u32) -> Result<Client, BrowserError> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let fail = |detail: String| BrowserError::Session {
            port: self.port,
            detail,
        };
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}"), "--no-first-run"]
            }
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let c = ClientBuilder::rustls()
            .map_err(|e| fail(e.to_string()))?
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        c.update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(30)),
            None,
        ))
        .await
        .map_err(|e| fail(e.to_string()))?;
        Ok(c)
    }
}

/// Opens the operator page of the controller at `url` and waits for its `meshwire:ready` (the
/// picture is drawn) or `meshwire:login` (it asks for a token) event; returns which.
pub async fn open_ui(c: &Client, url: &str) -> Result<String, fantoccini::error::CmdError> {
    c.goto(&format!("{}/ui", url.trim().trim_end_matches('/')))
        .await?;
    let r = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               if (window.meshwire && window.meshwire.ready) return done("ready");
               if (!document.getElementById("login").hidden) return done("login");
               addEventListener("meshwire:ready", () => done("ready"), { once: true });
               addEventListener("meshwire:login", () => done("login"), { once: true });"#,
            vec![],
        )
        .await?;
    Ok(r.as_str().unwrap_or_default().to_string())
}
