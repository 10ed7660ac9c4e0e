//! Faults of the machine under a real coordinator process: the disk holding
//! its store fills up. Needs root (a small ext4 filesystem on a loop device is
//! mounted for the store); skipped, saying so, without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use smsmesh::pb::BatchState;
use smsmesh_testkit::{
    Proc, batch_status, bin, client_at, listening_addr, synthetic, wait_ended, wait_sent,
};
use tonic::Code;

const LONG: Duration = Duration::from_secs(90);

/// A small ext4 filesystem on a loop device, unmounted when dropped.
struct SmallDisk {
    /// Holds the image file until the filesystem is unmounted.
    _image: tempfile::TempDir,
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Makes and mounts one of `mib` MiB; `None` (with the reason printed)
    /// where this test cannot mount, i.e. not as root.
    fn mount(mib: u32) -> Option<SmallDisk> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0");
        if !root {
            eprintln!("SKIPPED: mounting a small filesystem for a full disk needs root");
            return None;
        }
        let image = tempfile::tempdir().unwrap();
        let file = image.path().join("disk.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(u64::from(mib) << 20)
            .unwrap();
        let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&file));
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(dir.path()));
        Some(SmallDisk { _image: image, dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Whether a call failed because the server's GOAWAY (NO_ERROR) left its
/// stream out: tonic reports it as an internal transport error.
fn refused_by_goaway(s: &tonic::Status) -> bool {
    let text = format!("{s:?}");
    s.code() == Code::Internal && text.contains("GoAway(") && text.contains("NO_ERROR")
}

/// Writes `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// `smscoord` on `listen` with its store in `data`, its log (stderr) going to `log`.
fn coordinator(listen: &str, data: &Path, log: &Path) -> (Proc, std::net::SocketAddr) {
    let child = Command::new(bin("smscoord"))
        .args(["--listen", listen, "--insecure-no-auth", "--plaintext"])
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut proc = Proc { child };
    let addr = listening_addr(&mut proc.child).unwrap();
    (proc, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_coordinator_loudly_and_every_batch_resumes_once_space_returns() {
    let Some(disk) = SmallDisk::mount(32) else {
        return;
    };
    let data = disk.path().join("data");
    let logs = tempfile::tempdir().unwrap();
    let log: PathBuf = logs.path().join("smscoord.log");
    let (mut coord, addr) = coordinator("127.0.0.1:0", &data, &log);
    let url = format!("http://{addr}");
    let _node = Proc::node(
        &url,
        "n1",
        &["--concurrency", "1000", "--mean-latency", "5ms"],
    )
    .unwrap();
    let mut c = client_at(addr).await;

    // A batch runs; then something else fills the disk.
    let first = c.submit_batch(synthetic(600_000, 1)).await.unwrap();
    let mut accepted = vec![(first.into_inner().batch_id, 600_000)];
    wait_sent(&c, &accepted[0].0, 1000).await;
    let filler = disk.path().join("filler");
    fill(&filler);
    let deadline = tokio::time::Instant::now() + LONG;
    let exited = loop {
        if let Some(status) = coord.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the coordinator did not stop on the full disk"
        );
        match c.submit_batch(synthetic(10, accepted.len() as u64)).await {
            Ok(r) => accepted.push((r.into_inner().batch_id, 10)),
            Err(s) if s.code() == Code::Unavailable => {
                // Refused while it stops (or gone): when the store refused, the answer says why.
                let m = s.message();
                assert!(!m.contains("store") || m.contains("disk is full"), "{m}");
            }
            // A stream the server's GOAWAY refused, sent as it began to stop: HTTP/2
            // says it was not processed (RFC 9113, 6.8), so nothing was accepted.
            Err(s) if refused_by_goaway(&s) => {}
            // Any other failure must be the connection dying with its server:
            // the coordinator exits within moments, or the answer was wrong.
            Err(s) => {
                let gone = tokio::time::Instant::now() + Duration::from_secs(10);
                while coord.child.try_wait().unwrap().is_none() {
                    assert!(
                        tokio::time::Instant::now() < gone,
                        "unexpected answer to a submit from a coordinator still running: {s:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !exited.success(),
        "a coordinator that cannot store stops with an error: {exited}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("disk is full"), "the log says why:\n{text}");
    assert_eq!(
        exited.code(),
        Some(1),
        "an orderly exit, not a crash:\n{text}"
    );
    assert!(!accepted.is_empty());

    // Space returns; the supervisor restarts it where its node looks for it.
    std::fs::remove_file(&filler).unwrap();
    let (_coord, addr) = coordinator(&addr.to_string(), &data, &log);
    let mut c = client_at(addr).await;
    for (id, size) in &accepted {
        let b = match wait_ended(&mut c, id, LONG).await {
            Ok(b) => b,
            Err(e) => panic!(
                "{e}: {:?}\n{}",
                batch_status(&mut c, id).await,
                std::fs::read_to_string(&log).unwrap()
            ),
        };
        assert_eq!(b.state, BatchState::Completed as i32);
        assert_eq!(
            (b.sent, b.failed),
            (*size, 0),
            "every accepted message sent: {b:?}"
        );
    }
}
