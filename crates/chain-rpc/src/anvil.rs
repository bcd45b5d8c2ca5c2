//! A throwaway anvil node per test (feature `testkit`).
//!
//! [`AnvilInstance::spawn`] starts the anvil pinned in `tools/anvil` (install it with
//! `npm ci --prefix tools/anvil`, or point `BURSAR_ANVIL` at a binary) on 127.0.0.1 with a port the
//! OS picks, waits until it answers JSON-RPC, and stops that process when dropped. A missing binary
//! is an error with instructions, never a silently skipped test.
//!
//! anvil's cost per transaction grows with its history, so every test should start its own.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chain::{ConnectError, RpcChain, RpcOptions};

/// Environment variable naming the anvil binary to use instead of the pinned one.
pub const ANVIL_BINARY_ENV: &str = "BURSAR_ANVIL";
/// The pinned binary, relative to the workspace root.
pub const ANVIL_BINARY_RELATIVE_PATH: &str =
    "tools/anvil/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";
/// anvil's own default chain id, used by [`AnvilInstance::spawn`].
pub const ANVIL_CHAIN_ID_DEFAULT: u64 = 31337;
/// Limit on anvil starting and answering its first request: 15 s (it usually takes ~0.2 s).
pub const ANVIL_START_TIMEOUT_MS: u64 = 15_000;
/// Pause between readiness probes: 20 ms.
const READY_PROBE_INTERVAL_MS: u64 = 20;
/// Limit on one readiness probe: 1 s.
const READY_PROBE_TIMEOUT_MS: u64 = 1_000;
/// Lines of anvil's output kept for error messages.
const OUTPUT_TAIL_LINES_MAX: usize = 40;

/// Why anvil could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnvilError {
    /// No binary where one was expected.
    #[error(
        "anvil not found at {} ({origin}). Run `npm ci --prefix tools/anvil` in the workspace root \
         to install the pinned anvil, or set {ANVIL_BINARY_ENV} to the path of an anvil binary.",
        path.display()
    )]
    NotFound { path: PathBuf, origin: &'static str },
    /// The binary exists but did not come up.
    #[error("anvil at {} failed to start: {message}", path.display())]
    Start { path: PathBuf, message: String },
}

/// A running anvil process, stopped (killed and reaped) on drop.
pub struct AnvilInstance {
    child: Child,
    url: String,
    chain_id: u64,
}

impl std::fmt::Debug for AnvilInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnvilInstance")
            .field("pid", &self.child.id())
            .field("url", &self.url)
            .field("chain_id", &self.chain_id)
            .finish()
    }
}

/// The last lines a process wrote, for error messages.
#[derive(Default)]
struct OutputTail(Mutex<VecDeque<String>>);

impl OutputTail {
    fn push(&self, line: String) {
        let mut lines = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if lines.len() == OUTPUT_TAIL_LINES_MAX {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn text(&self) -> String {
        let lines = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if lines.is_empty() {
            "(no output)".into()
        } else {
            lines.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }
}

/// Reads a pipe to its end line by line (anvil logs every request, so its pipes must be drained or
/// it blocks), keeping the tail and reporting the address anvil listens on.
fn drain<R: Read + Send + 'static>(
    pipe: R,
    tail: Arc<OutputTail>,
    listening: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buffer = Vec::new();
        let mut listening = listening;
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buffer).trim_end().to_string();
            if let Some(address) = line.split("Listening on ").nth(1)
                && let Some(sender) = listening.take()
            {
                let _ = sender.send(address.trim().to_string());
            }
            tail.push(line);
        }
    });
}

/// The workspace root: the nearest ancestor of this crate holding `tools/anvil`.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .find(|dir| dir.join("tools/anvil/package.json").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.join("../.."))
}

/// The anvil binary: `$BURSAR_ANVIL` if set, else the one pinned in `tools/anvil`.
pub fn anvil_binary() -> Result<PathBuf, AnvilError> {
    let (path, origin) = match std::env::var_os(ANVIL_BINARY_ENV) {
        Some(path) if !path.is_empty() => (PathBuf::from(path), "from BURSAR_ANVIL"),
        _ => (
            workspace_root().join(ANVIL_BINARY_RELATIVE_PATH),
            "the pinned tools/anvil install",
        ),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(AnvilError::NotFound { path, origin })
    }
}

/// Sends `eth_chainId` over plain HTTP/1.1; true when the node answers with a result.
fn answers(address: SocketAddr) -> bool {
    let timeout = Duration::from_millis(READY_PROBE_TIMEOUT_MS);
    let Ok(mut stream) = TcpStream::connect_timeout(&address, timeout) else {
        return false;
    };
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut response = String::new();
    stream.set_read_timeout(Some(timeout)).is_ok()
        && stream.set_write_timeout(Some(timeout)).is_ok()
        && stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response.starts_with("HTTP/1.1 200")
        && response.contains("\"result\"")
}

impl AnvilInstance {
    /// Starts anvil with chain id [`ANVIL_CHAIN_ID_DEFAULT`].
    pub fn spawn() -> Result<AnvilInstance, AnvilError> {
        Self::spawn_with(ANVIL_CHAIN_ID_DEFAULT, &[])
    }

    /// Starts anvil with the given chain id.
    pub fn spawn_with_chain_id(chain_id: u64) -> Result<AnvilInstance, AnvilError> {
        Self::spawn_with(chain_id, &[])
    }

    /// Starts anvil with the given chain id and extra command-line arguments (for example
    /// `["--block-time", "1"]`).
    pub fn spawn_with(chain_id: u64, extra_args: &[&str]) -> Result<AnvilInstance, AnvilError> {
        let path = anvil_binary()?;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(ANVIL_START_TIMEOUT_MS);
        let start_error = |message: String| AnvilError::Start {
            path: path.clone(),
            message,
        };

        let mut child = Command::new(&path)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--chain-id",
                &chain_id.to_string(),
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| start_error(format!("cannot run it: {e}")))?;
        let output = Arc::new(OutputTail::default());
        let (listening_sender, listening) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            drain(stdout, output.clone(), Some(listening_sender));
        }
        if let Some(stderr) = child.stderr.take() {
            drain(stderr, output.clone(), None);
        }
        // From here on the instance owns the child, so every early return stops it.
        let mut instance = AnvilInstance {
            child,
            url: String::new(),
            chain_id,
        };

        let remaining = deadline.saturating_duration_since(Instant::now());
        let address = match listening.recv_timeout(remaining) {
            Ok(address) => address,
            Err(RecvTimeoutError::Timeout) => {
                return Err(start_error(format!(
                    "it did not report a listening address within {ANVIL_START_TIMEOUT_MS} ms; output:\n{}",
                    output.text()
                )));
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = instance
                    .child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                return Err(start_error(format!(
                    "it exited ({status}); output:\n{}",
                    output.text()
                )));
            }
        };
        let socket: SocketAddr = address
            .parse()
            .map_err(|e| start_error(format!("unexpected listening address {address:?}: {e}")))?;
        instance.url = format!("http://{socket}");

        while !answers(socket) {
            if let Ok(Some(status)) = instance.child.try_wait() {
                return Err(start_error(format!(
                    "it exited ({status}); output:\n{}",
                    output.text()
                )));
            }
            if Instant::now() >= deadline {
                return Err(start_error(format!(
                    "it did not answer at {} within {ANVIL_START_TIMEOUT_MS} ms; output:\n{}",
                    instance.url,
                    output.text()
                )));
            }
            std::thread::sleep(Duration::from_millis(READY_PROBE_INTERVAL_MS));
        }
        tracing::debug!(url = %instance.url, pid = instance.child.id(), elapsed = ?started.elapsed(), "anvil ready");
        Ok(instance)
    }

    /// The JSON-RPC URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The process id of the anvil this instance started.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Connects an [`RpcChain`] that owns this instance: anvil stops when the last reference to
    /// the chain is dropped.
    pub async fn into_chain(self) -> Result<Arc<RpcChain>, ConnectError> {
        let mut chain =
            RpcChain::open(&self.url, Some(self.chain_id), RpcOptions::default()).await?;
        chain.anvil = Some(self);
        Ok(Arc::new(chain))
    }
}

impl Drop for AnvilInstance {
    fn drop(&mut self) {
        // Only the process this instance started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
