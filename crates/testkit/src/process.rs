//! Our programs as real processes: finding their binaries, starting them,
//! reading the addresses they print, signalling them; and a TCP proxy that
//! can freeze traffic like a network partition.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Path of one of the workspace's programs (`smscoord`, `smsnode`, `smsmon`).
///
/// `cargo test --workspace` builds them next to the test executables, because
/// each program's crate has integration tests of its own.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or `cargo build --workspace --bins` first)",
        path.display()
    );
    path
}

/// Reads the address from `smscoord`'s first line (`smscoord listening on ADDR`);
/// `child` must have been started with its stdout piped. The rest of its stdout is
/// drained in the background so it never blocks on a full pipe.
pub fn listening_addr(child: &mut std::process::Child) -> anyhow::Result<SocketAddr> {
    Ok(stdout_addrs(child, &["smscoord listening on "])?[0])
}

/// Reads one `<prefix><address>` line per prefix, in order, from a child's piped
/// stdout (e.g. `smscoord listening on ...` then `smscoord metrics on ...`), then
/// drains the rest in the background so the child never blocks on a full pipe.
pub fn stdout_addrs(
    child: &mut std::process::Child,
    prefixes: &[&str],
) -> anyhow::Result<Vec<SocketAddr>> {
    use std::io::BufRead;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("the child's stdout is not piped"))?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut addrs = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the child exited before printing {prefix:?}"))??;
        let addr = line
            .strip_prefix(prefix)
            .ok_or_else(|| anyhow::anyhow!("expected {prefix:?}, got {line:?}"))?
            .parse()?;
        addrs.push(addr);
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok(addrs)
}

/// A child process of one of our programs, killed when dropped.
pub struct Proc {
    /// The child.
    pub child: std::process::Child,
}

impl Proc {
    /// Starts `smscoord --listen 127.0.0.1:<port> --data-dir <data> <args>` and
    /// returns it with its address.
    pub fn coordinator(
        data: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        Self::coordinator_on("127.0.0.1:0".parse()?, data, args)
    }

    /// Starts `smscoord` on `listen` (e.g. to restart it where its nodes look
    /// for it). Port 0 stands for a free port below the ephemeral range (see
    /// `ports.rs`), so that a test can start it on the same address
    /// again after killing it.
    pub fn coordinator_on(
        listen: SocketAddr,
        data: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        if listen.port() != 0 {
            return Self::start_coordinator(listen, data, args);
        }
        // The port is let go before smscoord binds it: should another test
        // take it meanwhile, smscoord exits before printing its address, and
        // another port is tried.
        let mut last = None;
        for _ in 0..5 {
            let port = crate::ports::restartable_listener()?.local_addr()?.port();
            match Self::start_coordinator(SocketAddr::new(listen.ip(), port), data, args) {
                Ok(started) => return Ok(started),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    fn start_coordinator(
        listen: SocketAddr,
        data: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let child = std::process::Command::new(bin("smscoord"))
            .args(["--listen", &listen.to_string()])
            .args(["--insecure-no-auth", "--plaintext"])
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SMSMESH_TEST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut proc = Proc { child };
        let addr = listening_addr(&mut proc.child)?;
        Ok((proc, addr))
    }

    /// Starts `smsnode --coordinator <url> --name <name> <args>`.
    pub fn node(url: &str, name: &str, args: &[&str]) -> anyhow::Result<Proc> {
        let child = std::process::Command::new(bin("smsnode"))
            .args(["--coordinator", url, "--name", name])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SMSMESH_TEST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .spawn()?;
        Ok(Proc { child })
    }

    /// Sends SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn term(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends SIGSTOP: the process is frozen until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Sends SIGCONT.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// Waits for the process to exit, `deadline` at most.
    pub async fn wait(&mut self, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let child = &mut self.child;
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= end {
                anyhow::bail!("process {} still running after {deadline:?}", child.id());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy that can cut traffic both ways without closing connections,
/// like a network partition or a frozen peer.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (frozen, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            // Accept loop: one pair of pumps per connection.
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, watch.clone()));
                tokio::spawn(pump(ur, dw, watch.clone()));
            }
        });
        Ok(Proxy { addr, frozen, task })
    }

    /// The proxy's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops forwarding in both directions; connections stay open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = frozen.wait_for(|f| *f) => continue,
        };
        // Bytes read just before a freeze are held until the thaw.
        if frozen.wait_for(|f| !f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
